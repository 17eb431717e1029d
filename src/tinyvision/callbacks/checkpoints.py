"""last.ckpt every N steps and every epoch, and torch's random state saved with it, for an exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from tinyvision.files import LAST_CHECKPOINT
from tinyvision.schema import PositiveInt, Target, spec


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` after every training epoch and every ``every_n_train_steps`` steps, for resuming.

    Lightning's ModelCheckpoint ties its 'last' file to its top-k saves and cannot save both every N
    steps and every epoch; this one writes through ``trainer.save_checkpoint``.
    """

    class Settings(Target):  # callbacks.last_checkpoint; defaults: __init__'s
        dirpath: str = spec("a directory path", "outputs/runs/<run>/checkpoints")
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
