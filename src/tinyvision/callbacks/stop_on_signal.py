"""A run stopped by a signal ends after the step under way, with last.ckpt at that step and the signal's exit status."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L

from tinyvision.callbacks.checkpoints import LastCheckpoint
from tinyvision.callbacks.lookup import find_callback


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
        last = find_callback(trainer, LastCheckpoint)
        if last is not None:
            last.save_now(trainer)  # none under trainer=debug (fast_dev_run saves nothing)
        # the checkpoint the stop's message promises only when it is there to resume from
        raise RunInterrupted(signum, self._last_written(trainer), self._requeue(trainer, last))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.signum is not None:  # Ctrl+C during the final test: resumed, the run tests again
            raise RunInterrupted(self.signum, self._last_written(trainer))

    def _last_written(self, trainer) -> Path | None:
        last = find_callback(trainer, LastCheckpoint)
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
        last = find_callback(trainer, LastCheckpoint)
        checkpoint = last.path if last is not None and last.path.is_file() else None
        return RunInterrupted(signum, checkpoint, self._requeue(trainer, last))
