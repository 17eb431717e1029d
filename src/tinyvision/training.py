"""The training run: compose data, model and trainer from the config, fit, test the best checkpoint."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from tinyvision import config
from tinyvision.callbacks import RunRecord, log_hparams
from tinyvision.errors import ConfigError, TinyVisionError
from tinyvision.module import ImageClassifier

log = logging.getLogger(__name__)

DATA_INFO_KEYS = ("channels", "image_size", "num_classes", "mean", "std")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, ImageClassifier]:
    """The data module and the classifier a config describes; fails fast on values that cannot work."""
    config.check(cfg)
    try:
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    except InstantiationException as error:
        if isinstance(error.__cause__, TinyVisionError):
            raise error.__cause__ from None  # our message already names the key and the fix
        raise
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data_info = {key: data[key] for key in DATA_INFO_KEYS}
    data_info["dataset"] = data.get("dataset", "folder")
    classifier = ImageClassifier(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        data=data_info,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) or None,
    )
    return datamodule, classifier


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, test on the best checkpoint, write metrics.json into the run dir and return its contents."""
    run_dir = Path(cfg.paths.output_dir)
    if (run_dir / "metrics.json").exists() or (run_dir / "checkpoints").exists():
        raise ConfigError(f"run dir {run_dir} already holds a run: it is kept as it is; start a new run instead")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, classifier = build(cfg)
    classifier.run_config = OmegaConf.to_container(cfg, resolve=True)

    callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    loggers = [hydra.utils.instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log_hparams(trainer, OmegaConf.to_container(cfg, resolve=True))

    started = time.perf_counter()
    trainer.fit(classifier, datamodule=datamodule)
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    test = trainer.test(classifier, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    seconds = time.perf_counter() - started

    record = next((c for c in trainer.callbacks if isinstance(c, RunRecord)), None)
    history = record.history if record else []
    metrics = {
        "test/acc": test.get("test/acc"),
        "test/loss": test.get("test/loss"),
        "val/acc_best": max((row.get("val/acc", 0.0) for row in history), default=None),
        "val/acc": history[-1].get("val/acc") if history else None,
        "val/loss": history[-1].get("val/loss") if history else None,
        "epochs": trainer.current_epoch,
        "wall_seconds": round(seconds, 2),
        "train_seconds": round(record.train_seconds, 2) if record else None,
        "train_samples_per_second": round(record.samples_per_second, 1) if record else None,
        "test_seconds": round(record.test_seconds, 3) if record else None,
        "best_checkpoint": best,
        "run_dir": str(run_dir),
        "history": history,
    }
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
    return metrics


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write through a temporary name so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(partial, path)
