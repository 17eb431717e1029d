"""Use a trained checkpoint: load it and rebuild its data pipeline (photos are prepared in data/photos.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tinyvision.checkpoints import load_checkpoint_file
from tinyvision.data.datamodule import data_module_settings
from tinyvision.errors import ConfigError
from tinyvision.module import ImageClassifier


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> ImageClassifier:
    """Load a tinyvision checkpoint, or fail with a message naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist: give the path of a .ckpt file from a run's checkpoints/ folder")
    try:
        checkpoint = load_checkpoint_file(path)
    except ConfigError as error:
        raise ConfigError(f"ckpt_path={error}: use best.ckpt or last.ckpt from a finished run") from error
    if not {"model", "data", "optimizer"} <= set(checkpoint.get("hyper_parameters", {})):
        raise ConfigError(f"ckpt_path={path} is not a tinyvision checkpoint (it has no model and data settings)")
    classifier = ImageClassifier.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    classifier.eval()
    return classifier


def datamodule_for(classifier: ImageClassifier, data: dict[str, Any] | None, data_dir: str):
    """The data module that evaluates ``classifier``: its training dataset, or ``data`` (another
    dataset config), either way with the checkpoint's channels, image size and normalization."""
    import hydra.utils

    trained = classifier.hparams.data
    saved = (classifier.run_config or {}).get("data")
    settings = dict(data or saved or {})
    if not settings:
        raise ConfigError("the checkpoint holds no data config: choose a dataset with data=mnist|fashion|cifar10|folder")
    if data is None and "root" in settings and settings.get("dataset"):
        settings["root"] = data_dir  # tensor datasets are looked up under this machine's data dir
    if settings.get("num_classes", trained["num_classes"]) != trained["num_classes"]:
        raise ConfigError(
            f"data.num_classes={settings['num_classes']} but the checkpoint's model has {trained['num_classes']} classes: "
            "evaluate on a dataset with the same classes"
        )
    for key in ("channels", "image_size", "num_classes"):
        settings[key] = trained[key]
    settings["test_every_epoch"] = False
    return hydra.utils.instantiate(data_module_settings(settings), _convert_="all")
