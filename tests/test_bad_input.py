"""Bad input fails before training with a message naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from tinyvision.errors import ConfigError
from tinyvision.training import train

CASES = {
    "zero learning rate": (["optimizer.lr=0"], "optimizer.lr=0 is not allowed: the learning rate must be a positive number"),
    "negative learning rate": (["optimizer=sgd", "optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed"),
    "batch size 0": (["data.batch_size=0"], "data.batch_size=0 is not allowed: it must be a whole number of images, 1 or more"),
    "validation larger than training": (
        ["data=mnist", "data.val_size=500"],
        "data.val_size=500 does not fit the training split of mnist (400 images): use a count from 1 to 399",
    ),
    "image too small for the model": (
        ["model=lenet", "data=mnist", "data.image_size=8"],
        "model lenet cannot take image_size=8: it needs at least 12x12 pixels",
    ),
    "image too small for convnet": (
        ["model=convnet", "data=cifar10", "data.image_size=9"],
        "model convnet cannot take image_size=9: it needs at least 10x10 pixels",
    ),
    "missing folder": (
        ["data=folder", "data.root=/nonexistent/images"],
        "data.root=/nonexistent/images does not exist: point data.root at a directory with one subfolder",
    ),
    "unknown activation": (["model=mlp", "model.activation=swishy"], "model.activation='swishy' is not known: choose one of relu"),
    "mean of the wrong length": (["data=mnist", "data.mean=[0.1,0.2]"], "data.mean=[0.1, 0.2] has 2 values but data.channels=1"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_before_training(make_config, tmp_path, case):
    overrides, message = CASES[case]
    cfg = make_config(*overrides, "logger=none")
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert message in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_class_folder_without_images_is_named(make_config, tmp_path, data_root):
    root = tmp_path / "images"
    (root / "ants").mkdir(parents=True)
    (root / "bees").mkdir()
    for image in (data_root / "ants_bees" / "ants").iterdir():
        (root / "ants" / image.name).write_bytes(image.read_bytes())
    (root / "bees" / "notes.txt").write_text("no images here")
    cfg = make_config("data=folder", f"data.root={root}", "logger=none")
    with pytest.raises(ConfigError, match=f"class folder {root / 'bees'} holds no images .*add images or remove the folder"):
        train(cfg)


def test_an_existing_run_is_never_overwritten(make_config, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"earlier work")
    with pytest.raises(ConfigError, match="already holds a run: it is kept as it is"):
        train(make_config("trainer=debug", "logger=none"))
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"earlier work"
