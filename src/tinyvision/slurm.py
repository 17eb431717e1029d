"""Preemption on SLURM: a job warned of its end (``sbatch --signal=USR1@90``, or a preemption's grace signal) saves
the step it reached, requeues itself with ``scontrol requeue``, and its next start resumes its own run folder.

Lightning's own auto-requeue saves ``hpc_ckpt_N.ckpt`` from inside the signal handler, wherever the step happens to
be, and finds it again only when the requeued job writes into the same folder; tinyvision keeps Lightning's
SLURM cluster environment (how DDP ranks are found) with its requeue off, and stops at the end of the step under way
instead (``StopOnSignal``), so the resumed run equals an uninterrupted one bit for bit. The requeued job finds its
folder by the job id written into it (``.slurm_job``), however its command names the folder.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tinyvision.files import LAST_CHECKPOINT, METRICS_FILE

log = logging.getLogger(__name__)

JOB_MARKER = ".slurm_job"  # in a run folder started by a SLURM job: that job's id, for its requeued start
REQUEUE_SIGNALS = ("USR1", "USR2")  # what sbatch --signal sends by convention; TERM and INT already stop a run


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


def requeue_signal(settings: dict[str, Any] | None) -> int | None:
    """The signal that asks for a requeue, when this process is a SLURM job with ``slurm.auto_requeue`` on."""
    settings = settings or {}
    if not settings.get("auto_requeue", True) or job_id() is None:
        return None
    return signal.Signals[f"SIG{settings.get('requeue_signal', 'USR1')}"]


def cluster_environment(settings: dict[str, Any] | None):
    """Lightning's SLURM environment (ranks, nodes, main address) with its own requeue handler off, when this process
    is a SLURM job; None elsewhere (Lightning then picks the environment itself)."""
    if job_id() is None:
        return None
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment(auto_requeue=False, requeue_signal=requeue_signal(settings) or signal.SIGUSR1)


def mark(run_dir: Path) -> None:
    """Write this job's id into the run folder it started, so that its requeued start finds it."""
    job = job_id()
    if job is not None and not (run_dir / JOB_MARKER).is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / JOB_MARKER).write_text(job + "\n")


def own_folder(candidates: Iterable[Path]) -> Path | None:
    """The unfinished run folder among ``candidates`` that a previous start of this (requeued) job left a checkpoint
    in; None when this job was not requeued or left none."""
    job = job_id()
    if job is None or not restarted():
        return None
    for folder in candidates:
        marker = folder / JOB_MARKER
        if (marker.is_file() and marker.read_text().strip() == job and (folder / LAST_CHECKPOINT).is_file()
                and not (folder / METRICS_FILE).exists()):
            return folder
    return None


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
