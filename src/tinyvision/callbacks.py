"""Callbacks that record what a run did, for metrics.json and TensorBoard."""

from __future__ import annotations

import difflib
import logging
import time
from typing import Annotated, Literal

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from pydantic import Field, field_validator, model_validator

from tinyvision.guards import StopOnNonFiniteLoss
from tinyvision.loggers import log_compared_hparams
from tinyvision.module import LOGGED_METRICS
from tinyvision.schema import ConfigValueError, NonNegative, Open, PositiveInt, Zero, spec

log = logging.getLogger("tinyvision")


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
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._due(batch_idx, "total_val_batches_current_dataloader"):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._due(batch_idx, "total_test_batches_current_dataloader"):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        watch = next((c for c in trainer.callbacks if isinstance(c, StopOnNonFiniteLoss)), None)
        if trainer.training and watch is not None and watch.shown_loss is not None:
            items = {"loss": f"{watch.shown_loss:.3f}", **items}
        return items


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
        ema = any(isinstance(c, EMA) for c in trainer.callbacks)
        return chance_warning(row, trainer.lightning_module.hparams.data["num_classes"], ema)

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


def gather_uneven(pl_module, rows):
    """Every rank's ``rows`` concatenated in rank order, when ranks hold different numbers of rows (the evaluation
    sampler splits N images over the ranks without repeating any): all_gather needs equal shapes, so each rank pads
    its rows to the longest share and the padding is dropped after the gather."""
    import torch

    counts = pl_module.all_gather(torch.tensor(len(rows), device=rows.device)).flatten().tolist()
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[: len(rows)] = rows
    gathered = pl_module.all_gather(padded)  # world_size × longest × ...
    return torch.cat([gathered[rank, :count] for rank, count in enumerate(counts)])


class TestReport(L.Callback):
    """After a test: the per-class report (tinyvision.report) in ``self.report``, its single figures logged
    as test/* metrics (so the test results, metrics.json and every logger hold them), and one precision-recall
    curve per class in TensorBoard's PR-curves tab. Validation is left alone: this runs once, on the test."""

    class Settings(Open):  # callbacks.test_report; defaults: __init__'s
        top_k: PositiveInt = spec("a whole number, 1 or more", 3)
        pr_curves: bool = spec("true or false", True)

    def __init__(self, top_k: int = 3, pr_curves: bool = True):
        self.top_k, self.pr_curves = top_k, pr_curves
        self.report: dict | None = None
        self._probabilities: list = []
        self._labels: list = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._probabilities, self._labels, self.report = [], [], None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if outputs is not None:  # kept on the device until the end: no host copy per batch
            self._probabilities.append(outputs.float().softmax(dim=1))
            self._labels.append(batch[1])

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        import torch

        from tinyvision.report import classification_report, scalars

        if not self._labels:
            return
        probabilities, labels = torch.cat(self._probabilities), torch.cat(self._labels)
        if trainer.world_size > 1:  # every rank's share, each image once
            probabilities, labels = gather_uneven(pl_module, probabilities), gather_uneven(pl_module, labels)
        names = [str(name) for name in pl_module.class_names]
        self.report = classification_report(probabilities, labels, names, self.top_k)
        pl_module.log_dict(scalars(self.report))
        self._probabilities, self._labels = [], []
        writer = next((logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)
        if self.pr_curves and writer is not None and trainer.is_global_zero:
            probabilities, labels = probabilities.cpu(), labels.cpu()
            for index, name in enumerate(names):
                writer.add_pr_curve(f"test/pr_curve/{name}", labels == index, probabilities[:, index], trainer.global_step)


class WarmedUpDecay:
    """The EMA update with timm's decay warm-up: after t updates the decay is ``min(decay, 1 - (1 + t) ** -power)``.

    A fixed decay of 0.98 keeps 0.98^t of the first weights in the average: after 20 steps (a short run with large
    batches) two thirds of the averaged model are still its random initialisation, and its averaged BatchNorm
    statistics match neither weights, so it predicts at chance while the raw model has learned. Warmed up, the
    average follows the raw weights closely at first and averages over ~1/(1-decay) steps once t is large."""

    def __init__(self, decay: float, power: float | None):
        self.decay, self.power = decay, power

    def decay_at(self, updates: int) -> float:
        if self.power is None:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + updates) ** -self.power)

    def __call__(self, averaged: list, current: list, updates) -> None:
        # ``updates`` is AveragedModel's count, which it reads on the host itself at every update.
        import torch

        decay = self.decay_at(int(updates))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
            torch._foreach_copy_(averaged, current)


class EMA(WeightAveraging):
    """An exponential moving average of the weights, updated after every step from ``start_step`` on:
    Lightning's WeightAveraging with a warmed-up EMA function (``WarmedUpDecay``; ``warmup_power: null`` for
    torch's fixed decay). BatchNorm statistics are averaged like the weights. Validation runs on the averaged
    weights, every checkpoint holds them as its weights (the raw ones ride along for resume), so the best
    checkpoint, the final test, eval, predict and export all use them."""

    def __init__(self, decay: float = 0.999, start_step: int = 0, warmup_power: float | None = 2 / 3):
        self.update_rule = WarmedUpDecay(decay, warmup_power)
        super().__init__(multi_avg_fn=self.update_rule, use_buffers=True)
        self.decay, self.start_step = decay, start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Testing the best checkpoint loads its (averaged) weights; only a resumed fit needs the EMA's own state.
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def exponential_moving_average(decay: float = 0.0, start_step: int = 0, warmup_power: float | None = 2 / 3) -> EMA | None:
    """The EMA callback, or none when ``decay`` is 0 (the config's way to switch it off)."""
    return EMA(decay, start_step, warmup_power) if decay > 0 else None


class _EmaSettings(Open):  # callbacks.ema; defaults: exponential_moving_average's
    decay: Annotated[float, Field(ge=0, lt=1)] | Zero = spec("a number from 0 (off) to below 1", 0.999)
    start_step: Annotated[int, Field(ge=0)] = spec("a whole number of steps, 0 or more", 0)
    warmup_power: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = spec(
        "null (a fixed decay) or a number above 0 up to 1", 0.6667)


exponential_moving_average.Settings = _EmaSettings


class LogHyperparameters(L.Callback):
    """Gives the loggers the run's curated hyperparameters when fit starts, after the data module's setup: a
    run refused while its data is read (a validation split larger than the data) leaves no events behind."""

    def __init__(self, params: dict):
        self.params = params

    def on_fit_start(self, trainer, pl_module) -> None:
        # A resumed run's TensorBoard folder has its entry from the start; other loggers begin a new record.
        log_compared_hparams(trainer, self.params, resumed=trainer.ckpt_path is not None)


# Lightning's own callbacks whose settings tinyvision checks (ours carry a ``Settings`` class).
class MonitorSettings(Open):
    """ModelCheckpoint's and EarlyStopping's metric: Lightning finds a misspelt one missing only after the first
    validation, and stops the run there."""

    monitor: str | None = spec("a metric the model logs: " + ", ".join(LOGGED_METRICS), "val/acc", None)
    mode: Literal["min", "max"] = spec("min or max", "max", "min")

    @field_validator("monitor")
    @classmethod
    def _logged(cls, value):
        if value is not None and value not in LOGGED_METRICS:
            close = difflib.get_close_matches(value, LOGGED_METRICS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigValueError("monitor", value, f"not a metric the model logs; {hint}(it logs {', '.join(LOGGED_METRICS)})",
                                   close[0] if close else "val/acc")
        return value

    @model_validator(mode="after")
    def _direction(self):
        """The best checkpoint of a loss is its lowest, of an accuracy its highest: the other mode keeps the worst."""
        metric = self.monitor or ""
        wanted = "min" if metric.endswith("/loss") else "max" if metric.endswith(("/acc", "/acc_best")) else None
        if wanted is not None and self.mode != wanted:
            raise ConfigValueError("mode", self.mode, f"{wanted} for monitor={metric} (the other way keeps the worst epoch)",
                                   wanted)
        return self


LIGHTNING_CALLBACK_SETTINGS = {
    "lightning.pytorch.callbacks.ModelCheckpoint": MonitorSettings,
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint": MonitorSettings,
    "lightning.pytorch.callbacks.EarlyStopping": MonitorSettings,
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping": MonitorSettings,
}
