"""The run record: per-epoch metrics and timings for metrics.json, and the warning of a model at chance."""

from __future__ import annotations

import logging
import time

import lightning as L

from tinyvision.callbacks.ema import EMA
from tinyvision.callbacks.lookup import find_callback

log = logging.getLogger("tinyvision")


class RunRecord(L.Callback):
    """Per-epoch metrics and timings: training throughput (training batches only), evaluation time."""

    def __init__(self):
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_samples = 0
        self.test_seconds = 0.0
        self._started: float | None = None
        self._epoch_seconds = 0.0
        self._fit_started = self._eval_started = 0.0
        self._val_seconds = 0.0
        self._samples_before = 0
        self._carried_seconds = 0.0  # training seconds of the current epoch before the checkpoint a run resumed from
        self._pending: dict[str, float] | None = None
        self._trainer: L.Trainer | None = None
        self.first_step_at: float | None = None  # Unix time of the first training step: start-up ends there
        self.warnings: list[str] = []  # what the run's summary and metrics.json should say about its results
        self._warned = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
        if self._started is None:
            # A run resumed mid-epoch (no epoch start), or training again after a mid-epoch validation: the clock
            # goes on, counting the seconds of this epoch that the checkpoint carried.
            self._started, self._carried_seconds = time.perf_counter() - self._carried_seconds, 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_started = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._add_pending_row(trainer)
        self._started, self._epoch_seconds, self._carried_seconds = time.perf_counter(), 0.0, 0.0
        self._samples_before = self.train_samples

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.train_samples += len(batch[1])

    def _stop_clock(self) -> None:
        if self._started is not None:
            elapsed, self._started = time.perf_counter() - self._started, None
            self._epoch_seconds += elapsed
            self.train_seconds += elapsed

    def on_validation_start(self, trainer, pl_module) -> None:
        # Inside fit, validation runs before the training epoch ends: stop the training clock here.
        if not trainer.sanity_checking:
            self._stop_clock()
        self._eval_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._val_seconds = time.perf_counter() - self._eval_started

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._eval_started = time.perf_counter()

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.test_seconds = time.perf_counter() - self._eval_started

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop_clock()
        self._pending = {
            "epoch": trainer.current_epoch + 1,
            "train_seconds": round(self._epoch_seconds, 3),
            "train_samples": self.train_samples - self._samples_before,
            "val_seconds": round(self._val_seconds, 3),
            "fit_seconds": round(time.perf_counter() - self._fit_started, 3),  # since fit began, evaluation included
        }

    def _completed_pending_row(self, trainer) -> dict | None:
        # The module logs the epoch's training metrics in its own on_train_epoch_end, which Lightning
        # calls after this callback's: the row is completed at the next epoch start, at the end, or
        # when a checkpoint is written after the epoch.
        if self._pending is None:
            return None
        row = dict(self._pending)
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.startswith(("train/", "val/", "test/")):
                row[key] = float(value)
        return row

    def _add_pending_row(self, trainer) -> None:
        row = self._completed_pending_row(trainer)
        if row is not None:
            self.history.append(row)
            self._pending = None
            # Said in the log as soon as two epochs in a row show it, so a long run need not be waited out.
            if not self._warned and len(self.history) >= 2 and all(self._chance(trainer, r) for r in self.history[-2:]):
                self._warned = True
                log.warning(self._chance(trainer, row))

    def _chance(self, trainer, row: dict) -> str | None:
        ema = find_callback(trainer, EMA) is not None
        return chance_warning(row, trainer.lightning_module.input.num_classes, ema)

    def on_train_end(self, trainer, pl_module) -> None:
        self._add_pending_row(trainer)
        # The summary says it when the run ended that way (a slow first epoch that recovered is no warning).
        warning = self._chance(trainer, self.history[-1]) if self.history else None
        self.warnings = [warning] if warning else []
        if warning and not self._warned:
            log.warning(warning)
        self._warned = self._warned or bool(warning)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer  # state_dict() needs it to complete a row still waiting for its metrics

    def state_dict(self) -> dict:
        # With a checkpoint, so that a resumed run's metrics.json holds the epochs before the stop.
        pending = self._completed_pending_row(self._trainer) if self._trainer is not None else None
        history = self.history + ([pending] if pending else [])
        running = time.perf_counter() - self._started if self._started is not None else 0.0  # a mid-epoch checkpoint
        return {"history": history, "train_seconds": self.train_seconds, "train_samples": self.train_samples,
                "epoch_seconds": self._epoch_seconds, "running_seconds": running, "epoch_samples_before": self._samples_before}

    def load_state_dict(self, state_dict: dict) -> None:
        if self._trainer is not None and self._trainer.state.fn != "fit":
            return  # testing a checkpoint must not roll the record back to that checkpoint's time
        self.history = list(state_dict["history"])
        self.train_seconds, self.train_samples = state_dict["train_seconds"], state_dict["train_samples"]
        # The epoch under way when the checkpoint was written: the clock's open stretch is not in train_seconds yet.
        self._epoch_seconds = state_dict.get("epoch_seconds", 0.0)
        self._carried_seconds = state_dict.get("running_seconds", 0.0)
        self._samples_before = state_dict.get("epoch_samples_before", self.train_samples)

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0


def chance_warning(row: dict, num_classes: int, ema: bool) -> str | None:
    """A line saying that a run's validation accuracy is at chance while its training accuracy has climbed, with
    the likely causes; None when the epoch's ``row`` (train/acc, val/acc) shows no such gap.

    Chance is 1/num_classes; "at chance" is within 5 points of it, "learned" is 20 points above it in training.
    A model that fits its training batches yet predicts one class on held-out images is usually not the model
    that trained: averaged weights that lag far behind, or BatchNorm statistics that no longer fit the weights."""
    train, val = row.get("train/acc"), row.get("val/acc")
    chance = 1.0 / num_classes
    if train is None or val is None or not (val < chance + 0.05 and train > chance + 0.2):
        return None
    causes = ["BatchNorm running statistics that lag behind fast-changing weights (a lower optimizer.lr, or more "
              "steps: a larger data.train_size or a smaller data.batch_size)"]
    if ema:
        causes.insert(0, "an average of the weights that has not caught up with training (callbacks.ema.decay too "
                         "high for the run's steps; callbacks.ema.decay=0 turns it off)")
    return (f"val/acc={val:.3f} is at chance (1/{num_classes}) at epoch {row.get('epoch')} while train/acc={train:.3f}: "
            f"the evaluated model has not learned what training shows. Likely causes: {'; '.join(causes)}; or a "
            "validation split unlike the training data")
