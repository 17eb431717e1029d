"""The stop on a diverging loss: a NaN or infinite training loss ends the run before any checkpoint of it."""

from __future__ import annotations

import math

import lightning as L
import torch

from tinyvision.callbacks.checkpoints import LastCheckpoint
from tinyvision.errors import TrainingDiverged
from tinyvision.schema import PositiveInt, Target, spec


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first NaN or infinite training loss, before any checkpoint of the broken weights.

    The check runs on the device: every step folds the loss into a few device tensors (the first
    non-finite step and value, the last finite step and value) without reading anything back, and the
    host reads them at most every ``check_every_n_steps`` steps, at the end of an epoch, and before a
    step's checkpoint. On a GPU a per-step read would stall the host until the step's kernels finish.
    The read also gives the progress bar its live loss (``shown_loss``).

    On the CPU there is nothing to stall: the loss is already a host number, reading it costs 0.2 µs where
    the device record's small tensor operations cost about 17 µs (bench/step_costs.py), so there every
    step is checked directly and the run stops at the first bad step (``read_on_cpu=False`` keeps the
    device record there too, as bench/sync_trace.py does to show a GPU's step on a CPU).
    """

    class Settings(Target):  # callbacks.stop_on_non_finite_loss; defaults: __init__'s
        check_every_n_steps: PositiveInt = spec("a whole number of steps, 1 or more", 50)
        read_on_cpu: bool = spec("true or false", True)

    def __init__(self, check_every_n_steps: int = 50, read_on_cpu: bool = True):
        self.check_every_n_steps = check_every_n_steps
        self.read_on_cpu = read_on_cpu
        self.last_finite: tuple[int, float] | None = None
        self.shown_loss: float | None = None
        self._record: torch.Tensor | None = None  # [first bad step, its batch, its value, last finite step, value]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()
        # global_step already counts this batch's optimizer step: it is this step's number, from 1.
        step = trainer.global_step
        if self.read_on_cpu and loss.device.type == "cpu":
            value = loss.item()
            if not math.isfinite(value):
                self._stop(trainer, step, batch_idx, value)
            self.last_finite = (step, value)
            self.shown_loss = value
            return
        loss = loss.float() if loss.device.type == "mps" else loss.double()  # MPS has no float64
        if self._record is None:
            self._record = torch.tensor([-1.0, -1.0, 0.0, -1.0, 0.0], dtype=loss.dtype, device=loss.device)
        finite, healthy = torch.isfinite(loss), self._record[0] < 0  # healthy: no bad loss seen yet
        first_bad, still_finite = ~finite & healthy, finite & healthy
        self._record = torch.where(
            torch.stack([first_bad, first_bad, first_bad, still_finite, still_finite]),
            torch.stack([torch.full_like(loss, step), torch.full_like(loss, batch_idx), loss,
                         torch.full_like(loss, step), loss]),
            self._record,
        )
        if self._check_due(trainer, batch_idx):
            self.check(trainer)

    def _check_due(self, trainer, batch_idx: int) -> bool:
        step = trainer.global_step
        if self.check_every_n_steps and step % self.check_every_n_steps == 0:
            return True
        if batch_idx + 1 >= trainer.num_training_batches:  # the epoch's end: validation and checkpoints follow
            return True
        # Lightning runs checkpoint callbacks after all others: check before one of them saves this step.
        return any(isinstance(c, LastCheckpoint) and c.saves_at(step) for c in trainer.callbacks)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check(trainer)

    def check(self, trainer) -> None:
        """Read the device record (one copy to the host) and stop if a loss was not finite."""
        if self._record is None:
            return
        bad_step, bad_batch, bad_value, finite_step, finite_value = self._record.tolist()
        if finite_step >= 0:
            self.last_finite = (int(finite_step), finite_value)
            self.shown_loss = finite_value
        if bad_step >= 0:
            self._stop(trainer, int(bad_step), int(bad_batch), bad_value)

    def _stop(self, trainer, bad_step: int, bad_batch: int, bad_value: float) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        last = f"{self.last_finite[1]:.4g} at step {self.last_finite[0]}" if self.last_finite else "none (the first step)"
        saved = [c.path for c in trainer.callbacks if isinstance(c, LastCheckpoint) and c.path.is_file()]
        kept = f"; the last good checkpoint is kept: {saved[0]}" if saved else ""
        raise TrainingDiverged(
            f"the training loss became {bad_value} at step {bad_step} (epoch {trainer.current_epoch + 1}, "
            f"batch {bad_batch + 1}); the last finite loss was {last}. Likely causes: a learning rate too high "
            f"(optimizer.lr={lr:g}: try a tenth of it), no normalization of the inputs (data.mean/data.std), "
            f"or a schedule that warms up too fast{kept}"
        )
