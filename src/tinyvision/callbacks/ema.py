"""An exponential moving average of the weights, with timm's decay warm-up (Lightning's WeightAveraging)."""

from __future__ import annotations

from typing import Annotated

from lightning.pytorch.callbacks import WeightAveraging
from pydantic import Field

from tinyvision.schema import Target, Zero, spec


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

    def __init__(self, decay: float, start_step: int, warmup_power: float | None):  # defaults: the factory's
        self.update_rule = WarmedUpDecay(decay, warmup_power)
        super().__init__(multi_avg_fn=self.update_rule, use_buffers=True)
        self.decay, self.start_step = decay, start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Testing the best checkpoint loads its (averaged) weights; only a resumed fit needs the EMA's own state.
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def exponential_moving_average(decay: float = 0.0, start_step: int = 0, warmup_power: float | None = 0.6667) -> EMA | None:
    """The EMA callback, or none when ``decay`` is 0 (the config's way to switch it off). warmup_power: timm's 2/3,
    written 0.6667 as it was when every recipe in RESULTS.md was measured."""
    return EMA(decay, start_step, warmup_power) if decay > 0 else None


class _EmaSettings(Target):  # callbacks.ema; defaults: exponential_moving_average's
    decay: Annotated[float, Field(ge=0, lt=1)] | Zero = spec("a number from 0 (off) to below 1", 0.999)
    start_step: Annotated[int, Field(ge=0)] = spec("a whole number of steps, 0 or more", 0)
    warmup_power: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = spec(
        "null (a fixed decay) or a number above 0 up to 1", 0.6667)


exponential_moving_average.Settings = _EmaSettings
