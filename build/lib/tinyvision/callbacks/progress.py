"""The progress bar."""

from __future__ import annotations

import time
from collections.abc import Mapping

from lightning.pytorch.callbacks import RichProgressBar

from tinyvision.callbacks.lookup import find_callback
from tinyvision.callbacks.loss_check import StopOnNonFiniteLoss
from tinyvision.schema import NonNegative, Open, spec


class ProgressBar(RichProgressBar):
    """Rich's progress bar, drawn at most every ``refresh_seconds``, with the training loss as last read by
    StopOnNonFiniteLoss.

    Lightning's bar redraws after every batch, about a millisecond of rendering each time: a quarter of a
    small model's step on a CPU (BENCHMARKS.md). Drawing ten times a second looks the same. Logging the loss
    with ``self.log(prog_bar=True)`` would make the bar turn it into a Python number at every batch, a
    device-to-host copy that stalls a GPU each step; this reads a host float."""

    class Settings(Open):  # callbacks.progress_bar; defaults: __init__'s
        refresh_seconds: NonNegative = spec("a number of seconds, 0 or more", 0.1)

    def __init__(self, refresh_seconds: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.refresh_seconds = refresh_seconds
        self._drawn_at = 0.0
        self._read_loss: float | None = None  # the loss this bar read itself, in a run without the loss check

    def _due(self, batch_idx: int, total: str) -> bool:
        """Draw when refresh_seconds have passed since the last drawing, and at a loop's last batch (``total``
        names the property that counts the loop's batches; a disabled bar, as on ranks other than 0, has none)."""
        if self.is_disabled:
            return False
        now = time.monotonic()
        if batch_idx + 1 >= getattr(self, total) or now - self._drawn_at >= self.refresh_seconds:
            self._drawn_at = now
            return True
        return False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._due(batch_idx, "total_train_batches"):
            if find_callback(trainer, StopOnNonFiniteLoss) is None and isinstance(outputs, Mapping) and "loss" in outputs:
                # Without the loss check (callbacks.stop_on_non_finite_loss=null) the bar reads the step's loss itself:
                # one host read a drawing, at most ten a second, not one a step.
                self._read_loss = float(outputs["loss"])
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._due(batch_idx, "total_val_batches_current_dataloader"):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._due(batch_idx, "total_test_batches_current_dataloader"):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        watch = find_callback(trainer, StopOnNonFiniteLoss)
        loss = watch.shown_loss if watch is not None else self._read_loss
        if trainer.training and loss is not None:
            items = {"loss": f"{loss:.3f}", **items}
        return items
