"""Optimizers and learning-rate schedules: their settings (``optimizer``, ``scheduler``) and how the classifier's
``configure_optimizers`` builds them from those settings: torch's classes, with the "auto" values filled in from the
run and an optional linear warm-up chained in front."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
from pydantic import ConfigDict, Field, field_validator, model_validator

from tinyvision.schema import (
    ConfigValueError,
    NonNegative,
    Open,
    PositiveInt,
    Section,
    Zero,
    by_target,
    check,
    instantiate,
    spec,
    with_signature_defaults,
)


class Optimizer(Open):
    target: str = Field(alias="_target_")
    partial: bool = Field(True, alias="_partial_")
    lr: Annotated[float, Field(gt=0)] = spec("a positive number", 0.01)
    # the backbone's lr is lr × this (the head keeps lr): e.g. 0.1 for pretrained models
    backbone_lr_scale: NonNegative = spec("a number, 0 or more (1: the same lr everywhere)", 0.1, 1.0)
    weight_decay: Annotated[float, Field(ge=0)] = spec("a number, 0 or more", 0.0005)

    def build(self, parameters) -> torch.optim.Optimizer:
        """The optimizer over ``parameters`` (tensors, or groups: the caller applies backbone_lr_scale)."""
        arguments = self.model_dump(exclude={"target", "partial", "backbone_lr_scale"})  # a user's class's keys too
        return instantiate(self.target, arguments, parameters)


class SGD(Optimizer):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
    momentum: Annotated[float, Field(ge=0, lt=1)] = spec("a number from 0 to below 1", 0.9)
    nesterov: bool = spec("true or false", True)
    dampening: Annotated[float, Field(ge=0, le=1)] = spec("a number from 0 to 1", 0.0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigValueError("nesterov", True, "only with momentum above 0 and no dampening",
                                   "true optimizer.momentum=0.9")
        return self


class Adam(Optimizer):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = spec(
        "two numbers from 0 to below 1", "[0.9,0.999]")
    eps: Annotated[float, Field(gt=0)] = spec("a positive number", 1e-8)
    amsgrad: bool = spec("true or false", False)


# Each optimizer's settings, by its _target_, with torch's own defaults (read from its signature: written once, there).
OPTIMIZERS = {f"torch.optim.{kind.__name__}": with_signature_defaults(settings, kind)
              for kind, settings in ((torch.optim.SGD, SGD), (torch.optim.Adam, Adam), (torch.optim.AdamW, Adam))}


# ---------------------------------------------------------------------------------------------- scheduler


class WarmupOnly(Section):
    """scheduler=none: a constant lr, after an optional warm-up."""

    # a linear warm-up over this many epochs (stepped per batch) before the schedule
    warmup_epochs: NonNegative = spec(
        "a number of epochs, 0 or more (fractions allowed)", 1, 0)

    @property
    def constant(self) -> bool:
        return not self.warmup_epochs

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int, max_epochs: int) -> list[dict[str, Any]]:
        """Lightning's scheduler entries for a run of ``total_steps`` optimizer steps over ``max_epochs``."""
        if not self.warmup_epochs:
            return []
        # A linear rise from a hundredth of each group's lr, stepped after every batch. Chained with the main
        # schedule (both scale the lr step by step), which starts counting its own epochs from the first.
        steps = max(1, round(self.warmup_epochs * total_steps / max_epochs))
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=steps)
        return [{"scheduler": warmup, "interval": "step"}]


class Scheduler(WarmupOnly, Open):
    target: str = Field(alias="_target_")
    partial: bool = Field(True, alias="_partial_")
    interval: Literal["epoch", "step"] = spec("epoch or step", "epoch", "epoch")  # when the schedule steps

    @property
    def constant(self) -> bool:
        return False

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int, max_epochs: int) -> list[dict[str, Any]]:
        # "auto" values are filled in from the run: the length of training and the optimizer's lr.
        auto = {
            "total_steps": total_steps,
            "T_max": max_epochs if self.interval == "epoch" else total_steps,
            "max_lr": [group["lr"] for group in optimizer.param_groups],  # per group: a scaled backbone stays scaled
        }
        arguments = self.model_dump(exclude={"target", "partial", "interval", "warmup_epochs"})
        arguments = {key: auto[key] if value == "auto" else value for key, value in arguments.items()}
        schedule = {"scheduler": instantiate(self.target, arguments, optimizer), "interval": self.interval}
        return [*super().build(optimizer, total_steps, max_epochs), schedule]


class Closed(Scheduler):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class StepLR(Closed):
    step_size: PositiveInt = spec("a whole number of epochs, 1 or more", 10)
    gamma: Annotated[float, Field(gt=0)] = spec("a positive factor", 0.1)


class MultiStepLR(Closed):
    milestones: Annotated[list[PositiveInt], Field(min_length=1)] = spec(
        "a rising list of epochs, each 1 or more", "[8,16,24]"
    )
    gamma: Annotated[float, Field(gt=0)] = spec("a positive factor", 0.5)

    @field_validator("milestones")
    @classmethod
    def _rising(cls, value):
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("")
        return value


class CosineAnnealingLR(Closed):
    T_max: Literal["auto"] | PositiveInt = spec("auto (trainer.max_epochs) or a number of epochs, 1 or more", "auto", "auto")
    eta_min: Annotated[float, Field(ge=0)] = spec("a number, 0 or more", 0.0)


class OneCycleLR(Closed):
    warmup_epochs: Zero | Annotated[float, Field(ge=0, le=0)] = spec("0: one-cycle warms up by itself (scheduler.pct_start)",
                                                                       0, 0)
    max_lr: Literal["auto"] | Annotated[float, Field(gt=0)] = spec("auto (the optimizer's lr) or a positive number", "auto", "auto")
    # OneCycleLR divides by (total_steps - 1): one step is a ZeroDivisionError; fewer than the run's optimizer steps
    # end the run when the schedule runs out (checked against the data at fit start: tinyvision.callbacks.FitChecks).
    total_steps: Literal["auto"] | Annotated[int, Field(ge=2)] = spec(
        "auto (every batch of the run) or a number of steps, 2 or more (at least the run's)", "auto", "auto")
    pct_start: Annotated[float, Field(gt=0, lt=1)] = spec("a fraction between 0 and 1", 0.3)
    anneal_strategy: Literal["cos", "linear"] = spec("cos or linear (with the linear rise: triangular)", "linear")


# Each schedule's settings, by its _target_, with torch's own defaults (read from its signature).
SCHEDULERS = {f"torch.optim.lr_scheduler.{kind.__name__}": with_signature_defaults(settings, kind)
              for kind, settings in ((torch.optim.lr_scheduler.StepLR, StepLR), (torch.optim.lr_scheduler.MultiStepLR, MultiStepLR),
                                     (torch.optim.lr_scheduler.CosineAnnealingLR, CosineAnnealingLR),
                                     (torch.optim.lr_scheduler.OneCycleLR, OneCycleLR))}


def optimizer_settings(section: Mapping[str, Any], key: str = "optimizer") -> Optimizer:
    """An ``optimizer`` section checked by its class's settings (a class tinyvision does not know: the common ones)."""
    return check(by_target(section, OPTIMIZERS, Optimizer), section, key)


def scheduler_settings(section: Mapping[str, Any] | None, key: str = "scheduler") -> WarmupOnly | None:
    """A ``scheduler`` section checked by its schedule's settings; without ``_target_``, a constant lr (WarmupOnly)."""
    if not section:
        return None
    fallback = Scheduler if isinstance(section, Mapping) and section.get("_target_") else WarmupOnly
    return check(by_target(section, SCHEDULERS, fallback), section, key)
