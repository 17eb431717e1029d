"""Checkpoints and resume: reading a checkpoint file, finding and configuring the run to resume, and
the callbacks and IO plugin that write resumable, never-half-written checkpoints."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from tinyvision.errors import ConfigError
from tinyvision.files import LAST_CHECKPOINT, METRICS_FILE, replacing
from tinyvision.schema import Open, PositiveInt, spec


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a resumed run continues from, or a message saying why there is none."""
    if not run_dir.is_dir():
        raise ConfigError(f"resume={run_dir} does not exist: give the folder of a run under outputs/")
    if (run_dir / METRICS_FILE).is_file():
        raise ConfigError(f"resume={run_dir} finished already (it has metrics.json): there is nothing to resume")
    path = run_dir / LAST_CHECKPOINT
    if not path.is_file():
        raise ConfigError(
            f"resume={run_dir} has no checkpoints/last.ckpt: the run stopped before its first checkpoint "
            "(written after every epoch and every callbacks.last_checkpoint.every_n_train_steps steps); start it anew"
        )
    return path


def config_for_resume(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config to resume ``cfg.resume`` with: the run's own when the command gives nothing else,
    else the command's, which must then equal the run's (a difference is refused, naming the keys)."""
    run_dir = Path(cfg.resume)
    checkpoint = load_checkpoint_file(last_checkpoint(run_dir))
    saved = checkpoint.get("config")
    if saved is None:
        raise ConfigError(f"{run_dir / 'checkpoints' / 'last.ckpt'} holds no tinyvision config: it cannot be resumed")
    given = [o for o in overrides if o.lstrip("+~").split("=")[0] not in ("resume",) and not o.startswith("hydra.")]
    if given:
        differences = _differences(saved, OmegaConf.to_container(cfg, resolve=True))
        if differences:
            raise ConfigError(
                f"resume={run_dir} was started with other settings than this command: {'; '.join(differences[:8])}. "
                f"Resume with `python train.py resume={run_dir}` alone (it takes the run's own settings), or start a new run"
            )
    resumed = OmegaConf.create(_moved(saved, str(saved.get("paths", {}).get("output_dir") or run_dir), str(run_dir)))
    resumed.resume = str(run_dir)
    resumed.paths.output_dir = str(run_dir)
    return resumed


def _moved(value: Any, old: str, new: str) -> Any:
    """The saved config with every path inside the run's old folder moved into its folder now: a run folder
    copied or moved elsewhere resumes there (the checkpoint holds its settings resolved, old paths included)."""
    if isinstance(value, dict):
        return {key: _moved(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_moved(item, old, new) for item in value]
    if isinstance(value, str) and old != new and (value == old or value.startswith(old.rstrip("/") + "/")):
        return new + value[len(old):]
    return value


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Keys whose values differ, as 'key: run value -> command value' (paths and resume are ignored)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current)):
            name = f"{prefix}{key}"
            if name in ("resume", "paths"):
                continue
            found += _differences(saved.get(key, "<absent>"), current.get(key, "<absent>"), f"{name}.")
        return found
    return [] if saved == current else [f"{prefix.rstrip('.')}: {saved} in the run -> {current} in this command"]


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """torch.load with weights_only, failing with a message that names an empty, truncated or foreign file."""
    from tinyvision.boundaries import load_torch

    checkpoint = load_torch("resume", path, "a PyTorch checkpoint", "it may be truncated or not a checkpoint: start the run anew")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


class ResumableRandomState(L.Callback):
    """Saves torch's random state with each checkpoint and restores it when training resumes, so dropout
    draws the same numbers as in the run that was stopped. Restored at the first training batch: what
    runs before it on resume (graph tracing, sanity checks) must not shift the stream."""

    def __init__(self):
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["cpu"])
        if "cuda" in self._pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending["cuda"])
        self._pending = None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, flushes it to disk, then renames it over
    the old one: a kill at any moment leaves either the previous checkpoint or the new one, whole.

    Lightning's own save stages the file in the system's temporary folder, and moving it into a run dir
    on another file system (a cluster's shared disk) is a copy, which a kill can cut in half.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        # A full disk or a refused write: the .partial file goes, the previous checkpoint stays, one line says why.
        with replacing(path, hidden=True) as partial, open(partial, "wb") as handle:
            try:
                torch.save(checkpoint, handle)
            except RuntimeError as error:  # torch's zip writer reports a short write (a full disk) as its own error
                if "inline_container" not in str(error) and "write" not in str(error).lower():
                    raise
                full = shutil.disk_usage(partial.parent).free < (1 << 20)
                raise OSError(errno.ENOSPC if full else errno.EIO, str(error).splitlines()[0]) from None
            handle.flush()
            os.fsync(handle.fileno())


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` after every training epoch and every ``every_n_train_steps`` steps, for resuming.

    Lightning's ModelCheckpoint ties its 'last' file to its top-k saves and cannot save both every N
    steps and every epoch; this one writes through ``trainer.save_checkpoint``.
    """

    class Settings(Open):  # callbacks.last_checkpoint; defaults: __init__'s
        every_n_train_steps: PositiveInt | None = spec("a whole number of steps, 1 or more, or null", 500)

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None):
        self.path = Path(dirpath) / Path(LAST_CHECKPOINT).name
        self.every_n_train_steps = every_n_train_steps or 0

    def saves_at(self, step: int) -> bool:
        return bool(self.every_n_train_steps) and step % self.every_n_train_steps == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.saves_at(trainer.global_step):
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def save_now(self, trainer) -> None:
        """last.ckpt at the step just completed (a signal's stop), unless this step's is already written."""
        if not self.saves_at(trainer.global_step):
            self._save(trainer)

    def _save(self, trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, for resume


class RunInterrupted(BaseException):
    """A run stopped by a signal: SIGTERM, SIGINT, or SLURM's warning of the job's end. A BaseException, as
    KeyboardInterrupt is: a sweep's handler of failed jobs must not catch it and go on with the next job when a
    scheduler or a user has asked the process to stop. ``requeued`` is the SLURM job id when the job requeued itself."""

    def __init__(self, signum: int, checkpoint: Path | None, requeued: str | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint, self.requeued = signum, checkpoint, requeued

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended: 143 for SIGTERM, 130 for SIGINT


class StopOnSignal(L.Callback):
    """SIGTERM (a scheduler's stop, ``kill``), SIGINT (Ctrl+C) and, in a SLURM job, SLURM's warning of the job's end
    (``tinyvision.slurm.EndWarning``) end training after the step under way: last.ckpt is written at that step, then
    ``RunInterrupted`` carries the signal out, so the script prints the resume command and exits 128 + the signal
    instead of Lightning's status 0. After SLURM's warning the job also requeues itself, and its next start resumes
    from that checkpoint. Ctrl+C during the final test stops it too (the run resumes into the test).

    Lightning notes SIGTERM itself (``trainer.received_sigterm``) and would stop at the same place without a
    checkpoint; SIGINT is noted here, and a second Ctrl+C stops at once (the checkpoint before it stays). Under DDP
    the ranks agree at each step on whether one of them was warned (SLURM signals every task, not necessarily
    within the same step)."""

    def __init__(self, warning=None):
        self.warning = warning  # tinyvision.slurm.EndWarning, in a SLURM job with auto_requeue
        self.signum: int | None = None  # SIGINT, once noted
        self._previous_sigint = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage in ("fit", "test") and threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._note_sigint)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _note_sigint(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signum = signal.SIGINT

    def _warned(self, trainer) -> bool:
        if self.warning is None or self.warning.signum is None:
            return False
        if trainer.world_size > 1:  # one small all-reduce a step, only in a SLURM job: every rank stops at the same step
            return bool(trainer.strategy.reduce_boolean_decision(self.warning.received, all=False))
        return self.warning.received

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        warned = self._warned(trainer)
        signum = signal.SIGTERM if trainer.received_sigterm else self.signum or (self.warning.signum if warned else None)
        if signum is None:
            return
        last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        if last is not None:
            last.save_now(trainer)
        raise RunInterrupted(signum, last.path if last is not None else None, self._requeue(trainer, last))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.signum is not None:  # Ctrl+C during the final test: resumed, the run tests again
            raise RunInterrupted(self.signum, self._last_written(trainer))

    def _last_written(self, trainer) -> Path | None:
        last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        return last.path if last is not None and last.path.is_file() else None

    def _requeue(self, trainer, last: LastCheckpoint | None) -> str | None:
        """After SLURM's warning, with a checkpoint to resume from: the job id, once rank zero has requeued the job."""
        from tinyvision import slurm

        if self.warning is None or not self.warning.received or last is None or not last.path.is_file():
            return None
        requeued = slurm.requeue() if trainer.is_global_zero else True
        return slurm.job_id() if requeued else None

    def interrupted(self, trainer) -> RunInterrupted | None:
        """After fit or test ended by an exception: the stop a signal asked for, if one did (stopped outside a
        training step, during validation or the test, the last checkpoint written is the one to resume). Warned by
        SLURM before, the job requeues itself."""
        signum = signal.SIGTERM if trainer.received_sigterm else self.signum
        if signum is None:
            return None
        last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        checkpoint = last.path if last is not None and last.path.is_file() else None
        return RunInterrupted(signum, checkpoint, self._requeue(trainer, last))
