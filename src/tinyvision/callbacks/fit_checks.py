"""``FitChecks``: settings that only the data's size can refuse, checked when fit sets up."""

from __future__ import annotations

import math

import lightning as L

from tinyvision.errors import ConfigError
from tinyvision.optim import OneCycleLR


class FitChecks(L.Callback):
    """Settings that only the data's size can refuse, checked when fit sets up (the data read, nothing trained): Lightning
    would stop the run with a traceback at the start of its loop (``trainer.val_check_interval`` past the epoch's end),
    or PyTorch at the step where one-cycle's schedule runs out (``scheduler.total_steps`` below the run's steps)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.fast_dev_run:
            return
        batches = training_batches(trainer)
        if batches is None:
            return
        interval = trainer.val_check_interval
        if (isinstance(interval, int) and not isinstance(interval, bool) and interval > batches
                and trainer.check_val_every_n_epoch is not None and trainer.limit_val_batches > 0):
            raise ConfigError(
                f"trainer.val_check_interval={interval}: an epoch has {batches} training batches here, so validation would "
                f"never come: validate every {batches} batches or fewer, e.g. trainer.val_check_interval={max(1, batches // 2)}, "
                "or at a fraction of each epoch, e.g. trainer.val_check_interval=0.5")
        schedule = getattr(pl_module, "scheduler_settings", None)
        total = getattr(schedule, "total_steps", "auto")
        if isinstance(schedule, OneCycleLR) and total != "auto":
            needed = run_steps(trainer, batches, schedule.interval)
            if needed is not None and total < needed:
                per = "epochs" if schedule.interval == "epoch" else "optimizer steps"
                raise ConfigError(
                    f"scheduler.total_steps={total}: this run takes {needed} {per} and one-cycle stops it at {total + 1} "
                    f"(its schedule has ended): use scheduler.total_steps=auto, or at least {needed}, e.g. "
                    f"scheduler.total_steps={needed}")


def training_batches(trainer: L.Trainer) -> int | None:
    """The training batches of one epoch on this rank, as Lightning will count them (limit_train_batches applied)."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not hasattr(datamodule, "train_batches_per_epoch"):
        return None
    batches = datamodule.train_batches_per_epoch()
    limit = trainer.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(batches, limit)
    return int(batches * limit) if limit is not None else batches


def run_steps(trainer: L.Trainer, batches: int, interval: str) -> int | None:
    """How often a scheduler stepped every ``interval`` (epoch or step) steps in the whole run, or None when unbounded."""
    epochs = trainer.max_epochs
    if epochs is None or epochs < 0:
        return None
    if interval == "epoch":
        return epochs
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * epochs
    return min(steps, trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else steps
