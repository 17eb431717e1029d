"""Preemption on SLURM: a job warned of its end (``sbatch --signal=USR1@90``, or a preemption's grace signal) saves
the step it reached, requeues itself with ``scontrol requeue``, and its next start resumes its own run folder.

Lightning's own auto-requeue saves ``hpc_ckpt_N.ckpt`` from inside the signal handler, wherever the step happens to
be, and finds it again only when the requeued job writes into the same folder; tinyvision keeps Lightning's
SLURM cluster environment (how DDP ranks are found) with its requeue off, and stops at the end of the step under way
instead (``StopOnSignal``), so the resumed run equals an uninterrupted one bit for bit. The requeued job finds its
folder by the job id written into it (``.slurm_job``), however its command names the folder.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from tinyvision.files import LAST_CHECKPOINT, METRICS_FILE
from tinyvision.schema import Section, spec

log = logging.getLogger(__name__)

JOB_MARKER = ".slurm_job"  # in a run or sweep folder a SLURM job started: the job's id and command, for its requeued start
REQUEUE_SIGNALS = ("USR1", "USR2")  # what sbatch --signal sends by convention; TERM and INT already stop a run


class SlurmSettings(Section):
    """``slurm``: what a SLURM batch job does when warned of its end (ignored outside SLURM)."""

    # on requeue_signal: last.ckpt at the step reached, scontrol requeue, and the next start resumes it
    auto_requeue: bool = spec("true or false", True, True)
    requeue_signal: Literal[REQUEUE_SIGNALS] = spec("USR1 or USR2 (what sbatch --signal sends)", "USR1", "USR1")


def job_id() -> str | None:
    """This SLURM job's id as ``scontrol`` names it (an array task as JOB_TASK), or None outside a batch job."""
    if not os.environ.get("SLURM_JOB_ID"):  # most runs: no SLURM, and Lightning is not imported to learn it
        return None
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():  # an interactive srun shell is no batch job to requeue
        return None
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{array_task}" if array_job and array_task else os.environ.get("SLURM_JOB_ID")


def restarted() -> bool:
    """Whether this job was requeued: SLURM counts its starts in SLURM_RESTART_COUNT."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def requeue_signal(settings: SlurmSettings) -> int | None:
    """The signal that asks for a requeue, when this process is a SLURM job with ``slurm.auto_requeue`` on."""
    if not settings.auto_requeue or job_id() is None:
        return None
    return signal.Signals[f"SIG{settings.requeue_signal}"]


def cluster_environment(settings: SlurmSettings):
    """Lightning's SLURM environment (ranks, nodes, main address) with its own requeue handler off, when this process
    is a SLURM job; None elsewhere (Lightning then picks the environment itself)."""
    if job_id() is None:
        return None
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment(auto_requeue=False, requeue_signal=requeue_signal(settings) or signal.SIGUSR1)


def command_of(overrides: Iterable[str]) -> list[str]:
    """A command line's own overrides, as Hydra's ``overrides.task`` holds them: Hydra's settings and flags left out
    (the output folder tinyvision pins is one of them), so a requeued start's command equals its first start's."""
    return [o for o in overrides if not o.startswith("-") and not o.lstrip("+~").startswith(("hydra.", "hydra/"))]


def mark(folder: Path, command: list[str]) -> None:
    """Write this job's id and the command into a folder it started, so that its requeued start finds it: a batch
    script may run several commands, each finds its own."""
    job = job_id()
    if job is not None and not (folder / JOB_MARKER).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / JOB_MARKER).write_text(json.dumps({"job": job, "command": list(command)}) + "\n")


def _marked_by_this_job(folder: Path, command: list[str]) -> bool:
    try:
        marker = json.loads((folder / JOB_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("job") == job_id() and marker.get("command") == list(command)


def earlier_folder(candidates: Iterable[Path], command: list[str]) -> Path | None:
    """In a requeued job, the folder that this job's earlier start of the same command left (finished or not);
    None in a job that was not requeued, and outside SLURM."""
    if job_id() is None or not restarted():
        return None
    return next((folder for folder in candidates if folder.is_dir() and _marked_by_this_job(folder, command)), None)


def resumable(folder: Path) -> bool:
    return (folder / LAST_CHECKPOINT).is_file() and not (folder / METRICS_FILE).exists()


class EndWarning:
    """In a SLURM job with ``slurm.auto_requeue``, notes the requeue signal (SLURM's warning of the job's end) for the
    whole run, so that it is never the signal's default action, death without a requeue, wherever it lands: during a
    step, the data's set-up, a validation or the final test. ``StopOnSignal`` acts on it at the end of the step under
    way; a warning during the final test lets the test finish, and requeues only if the job's end (SIGTERM) comes
    first."""

    def __init__(self, settings: SlurmSettings):
        self.signum = requeue_signal(settings)
        self.received = False
        self._previous = None

    def __enter__(self) -> EndWarning:
        if self.signum is not None and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._note)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _note(self, signum, frame) -> None:
        if not self.received:
            log.warning("%s: SLURM's warning of the job's end; the run stops after the step under way and requeues",
                        signal.Signals(signum).name)
        self.received = True


def requeue() -> bool:
    """``scontrol requeue`` this job, as Lightning's handler does; False (and a log line saying why) if it failed."""
    job = job_id()
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("scontrol requeue %s failed: %s", job, error)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (status %d): %s", job, result.returncode, result.stderr.strip())
    return result.returncode == 0
