"""The learning-rate finder: Lightning's ``Tuner.lr_find`` on the composed model and data, a short run that raises
the lr step by step and records the loss; the loss-vs-lr plot (lr_find.png), the suggested lr and the train.py command
that uses it, or a plain no. Two known failure modes of Lightning's finder are handled: its curve's bias correction is
off by one step (corrected here, see ``corrected_curve``), and the model state it restores after the search is never
used: the search runs in its own process and nothing is trained after it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pydantic import Field, model_validator
from rich.console import Console

from tinyvision.callbacks import ShareCores
from tinyvision.config import RunSettings, validate_train
from tinyvision.files import save_figure, write_json
from tinyvision.schema import ConfigValueError, Section, check, spec
from tinyvision.trainer import make_trainer
from tinyvision.training import build

BETA = 0.98  # the smoothing of Lightning's lr finder


def find_lr(cfg: DictConfig) -> float | None:
    """Run the finder for a composed lr_find config; the suggested lr, or None (said on the console) when none."""
    import lightning as L
    from lightning.pytorch.tuner import Tuner

    run_settings, settings = validate_lr_find(cfg)  # every train key, and min_lr < max_lr, 20 steps or more
    L.seed_everything(run_settings.seed, workers=True, verbose=False)
    datamodule, classifier = build(run_settings)
    # no checkpoints, logs, loss stop or pictures: only the sweep, on this run's share of the cores
    trainer = make_trainer(run_settings, [ShareCores(run_settings.threads)], [])
    run_dir = Path(cfg.paths.output_dir)
    result = Tuner(trainer).lr_find(classifier, datamodule=datamodule, min_lr=settings.min_lr, max_lr=settings.max_lr,
                                    num_training=settings.num_training, update_attr=False)
    console = Console()
    if result is None:
        console.print("[red]no learning rate found[/]: the finder did not run (no training batches?)")
        return None
    lrs, losses = corrected_curve(result.results["lr"], result.results["loss"])
    suggestion = steepest_fall(lrs, losses)
    plot(lrs, losses, suggestion, run_dir / "lr_find.png")
    write_json(run_dir / "lr_find.json", {"suggestion": suggestion, "lr": lrs, "loss": losses})
    if suggestion is None:
        console.print("[red]no learning rate could be suggested[/]: the loss did not fall anywhere in "
                      f"[{settings.min_lr:g}, {settings.max_lr:g}] over {len(lrs)} steps. Look at "
                      f"{run_dir / 'lr_find.png'}; try a wider range (lr_find.min_lr, lr_find.max_lr) or more steps "
                      "(lr_find.num_training)")
        return None
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("lr_find.", "optimizer.lr=", "hydra."))]
    console.print(f"suggested learning rate: [bold]{suggestion:.3g}[/] (the steepest fall of the loss); plot: {run_dir / 'lr_find.png'}")
    console.print(f"train with it: python train.py {' '.join([*overrides, f'optimizer.lr={suggestion:.3g}'])}")
    return suggestion


def corrected_curve(lrs: list[float], smoothed: list[float]) -> tuple[list[float], list[float]]:
    """Lightning's smoothed losses with its bias correction redone: it divides step i's running average by
    1 - beta^(i+2) instead of 1 - beta^(i+1) (it counts the step after its optimizer step), which pulls the
    first points far below the real loss (a 2.5 loss shows as 1.3) and makes the curve seem to rise from
    the start. The raw losses are recovered from its running average and smoothed again, correctly."""
    raw, previous = [], 0.0
    for index, value in enumerate(smoothed):
        if not math.isfinite(value):
            raw.append(float("nan"))
            continue
        average = value * (1 - BETA ** (index + 2))
        raw.append((average - BETA * previous) / (1 - BETA))
        previous = average
    out, average = [], 0.0
    for index, loss in enumerate(raw):
        if not math.isfinite(loss):
            out.append(float("nan"))
            continue
        average = BETA * average + (1 - BETA) * loss
        out.append(average / (1 - BETA ** (index + 1)))
    return list(lrs), out


def steepest_fall(lrs: list[float], losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """The lr where the smoothed loss falls fastest against log(lr) (Lightning's rule, over a wider step);
    None when it never falls."""
    import numpy as np

    lr, loss = np.array(lrs[skip_begin:len(lrs) - skip_end]), np.array(losses[skip_begin:len(losses) - skip_end])
    finite = np.isfinite(loss)
    if finite.sum() < 3:
        return None
    lr, loss = lr[finite], loss[finite]
    # The slope over ±5 steps (a tenth of a decade at 100 steps over six decades), not between neighbours:
    # step-to-step noise would otherwise pick a dip anywhere on a flat stretch.
    k = max(1, min(5, (len(lr) - 1) // 2))
    slope = (loss[2 * k:] - loss[:-2 * k]) / (np.log(lr[2 * k:]) - np.log(lr[:-2 * k]))
    best = int(np.argmin(slope))
    return float(lr[best + k]) if slope[best] < 0 else None


def plot(lrs: list[float], losses: list[float], suggestion: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(lrs, losses)
    if suggestion is not None:
        index = min(range(len(lrs)), key=lambda i: abs(lrs[i] - suggestion))
        axes.plot([suggestion], [losses[index]], "o", color="red", label=f"suggested lr {suggestion:.3g}")
        axes.legend()
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss (smoothed)")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


class LrFindSettings(Section):
    """``lr_find``: the learning-rate finder's sweep (find_lr.py, conf/lr_find.yaml)."""

    min_lr: Annotated[float, Field(gt=0)] | Annotated[int, Field(gt=0)] = spec("a positive number below lr_find.max_lr", 1e-6)
    max_lr: Annotated[float, Field(gt=0)] | Annotated[int, Field(gt=0)] = spec("a positive number above lr_find.min_lr", 1)
    num_training: Annotated[int, Field(ge=20)] = spec("a whole number of steps, 20 or more", 100)

    @model_validator(mode="after")
    def _range(self):
        if self.min_lr >= self.max_lr:
            raise ConfigValueError("min_lr", self.min_lr, f"below lr_find.max_lr={self.max_lr:g}", 1e-6)
        return self


def validate_lr_find(cfg: DictConfig) -> tuple[RunSettings, LrFindSettings]:
    """The train config's keys, and the learning-rate finder's own."""
    settings = validate_train(cfg, checked_by_caller=("lr_find",))
    return settings, check(LrFindSettings, settings.config.get("lr_find") or {}, "lr_find")
