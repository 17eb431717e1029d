"""data=folder on the fast path: decoded once into a cache keyed by the folder, the same pixels as the
per-image path, a fallback when the cache would not fit, and unreadable images listed or refused."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

from conftest import write_image_folder
from tinyvision import image_folders
from tinyvision.data import folder_cache
from tinyvision.data.batches import TensorBatches
from tinyvision.data.datamodule import FolderDataModule
from tinyvision.errors import ConfigError


def folder_module(root, cache_dir, **overrides) -> FolderDataModule:
    settings = dict(root=str(root), channels=3, image_size=32, num_classes=2, batch_size=8, val_size=0.1, test_size=0.2,
                    num_workers=0, cache_dir=str(cache_dir), seed=3)
    return FolderDataModule(**{**settings, **overrides})


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root)
    return root


def test_the_folder_is_decoded_once_and_decoded_again_when_it_changes(images, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = folder_module(images, cache)
    first.setup("fit")
    assert first.cached and isinstance(first.train_dataloader(), TensorBatches)
    assert first.splits["train"][0].dtype == torch.uint8 and first.splits["train"][0].shape[1:] == (3, 32, 32)
    assert sum(len(first.splits[s][0]) for s in ("train", "val", "test")) == 48 and len(list(cache.glob("*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the folder did not change")

    monkeypatch.setattr(folder_cache, "decode", no_decoding)
    second = folder_module(images, cache)
    second.setup("fit")
    for split in ("train", "val", "test"):
        assert torch.equal(second.splits[split][0], first.splits[split][0])

    monkeypatch.undo()
    changed = images / "ants" / "000.png"
    shutil.copy(images / "bees" / "001.png", changed)  # another image under the same name
    os.utime(changed, ns=(10**18, 10**18))
    third = folder_module(images, cache)
    third.setup("fit")
    assert len(list(cache.glob("*.pt"))) == 2  # a new key: decoded again


def test_the_cached_and_the_per_image_paths_give_the_same_pixels(images, tmp_path, caplog):
    cached = folder_module(images, tmp_path / "cache")
    cached.setup("fit")
    with caplog.at_level(logging.INFO, logger="tinyvision"):
        per_image = folder_module(images, tmp_path / "cache2", cache_max_gb=0)
        per_image.setup("fit")
    assert not per_image.cached and not list((tmp_path / "cache2").glob("*.pt"))
    [line] = [r.getMessage() for r in caplog.records if "cache_max_gb" in r.getMessage()]
    assert "decoding them per image" in line and "raise data.cache_max_gb" in line
    for split in ("train", "val", "test"):
        images_per_image = torch.stack([per_image.streamed.datasets[split][i][0] for i in range(len(per_image.streamed.datasets[split]))])
        assert torch.equal(images_per_image, cached.splits[split][0].cpu()), split


def test_unreadable_images_are_listed_and_skipped_or_refused(images, tmp_path, caplog):
    (images / "bees" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with caplog.at_level(logging.WARNING, logger="tinyvision"):
        skipping = folder_module(images, tmp_path / "cache")
        skipping.setup("fit")
    assert [file for file, _ in skipping.skipped] == [str(images / "bees" / "broken.png")]
    assert sum(len(skipping.splits[s][0]) for s in ("train", "val", "test")) == 48
    assert any("skipped 1 images that cannot be read" in r.getMessage() and "broken.png" in r.getMessage() for r in caplog.records)
    refusing = folder_module(images, tmp_path / "cache", skip_bad_images=False)
    with pytest.raises(ConfigError, match=r"data.skip_bad_images=false and 1 images cannot be read: .*broken.png"):
        refusing.setup("fit")


def test_a_cached_folder_trains_end_to_end(images, make_config, tmp_path):
    from tinyvision.training import train

    metrics = train(make_config("data=folder", f"data.root={images}", "data.num_classes=2", "data.image_size=32",
                                f"data.cache_dir={tmp_path / 'cache'}", "data.augment.crop_padding=2", "trainer.max_epochs=2",
                                run_dir=tmp_path / "run"))
    assert metrics["epochs"] == 2 and list((tmp_path / "cache").glob("folder-*.pt"))


@pytest.mark.parametrize("mode, value, expected", [("I;16", 65535, 255), ("I;16", 32896, 128), ("I", 1000, 255),
                                                   ("F", 0.5, 128)])
def test_deep_images_are_scaled_to_8_bit_on_both_paths_in_decode_workers(tmp_path, mode, value, expected):
    """A 16-bit (or 32-bit, float) grey PNG/TIFF among ordinary images: decoded in two worker processes on the
    cached path (it used to kill them) and per image, scaled to 8 bits rather than clipped white."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "images"
    write_image_folder(root, per_class=6)
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    deep = Image.fromarray(np.full((40, 40), value, dtype=dtype))
    assert deep.mode == mode
    name = "deep.png" if mode == "I;16" else "deep.tif"  # PNG holds 16-bit grey; 32-bit and float need TIFF
    deep.save(root / "ants" / name)
    settings = dict(val_size=2, test_size=2, num_workers=2, channels=1, seed=0)
    cached = folder_module(root, tmp_path / "cache", **settings)
    cached.setup("fit")
    per_image = folder_module(root, tmp_path / "cache", cache_max_gb=0, **settings)
    per_image.setup("fit")
    decoded = folder_cache.load_or_decode(root, image_folders.image_files(root, ["ants", "bees"]), 1, (32, 32), tmp_path / "cache", 0)[0]
    index = decoded.files.index(os.path.join("ants", name))
    assert decoded.images[index].unique().tolist() == [expected] and not decoded.bad
    folder = per_image.streamed.datasets["train"]
    while isinstance(folder, torch.utils.data.Subset):
        folder = folder.dataset  # the listed files under the splits
    sample = next(i for i, (path, _) in enumerate(folder.samples) if str(path).endswith(name))
    assert folder[sample][0].unique().tolist() == [expected]


# ------------------------------------------------------------------------------------ one class map for every split
def test_every_split_is_labelled_by_the_training_splits_class_folders(tmp_path):
    """train/{ants,bees,wasps} and test/{ants,wasps}: the test's wasps are class 2, as in training (mapped by the
    test split's own folders they would be class 1, bees); a test split lacking a class is fine."""
    root = tmp_path / "images"
    write_image_folder(root / "train", classes=("ants", "bees", "wasps"), per_class=6)
    write_image_folder(root / "test", classes=("ants", "wasps"), per_class=3)
    module = folder_module(root, tmp_path / "cache", num_classes=3, val_size=2)
    module.setup("fit")
    assert module.class_names == ["ants", "bees", "wasps"]
    assert module.splits["test"][1].tolist() == [0, 0, 0, 2, 2, 2]


def test_a_test_class_that_training_lacks_is_refused_before_training(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root / "train", classes=("cat", "dog"), per_class=4)
    write_image_folder(root / "test", classes=("cat", "cow"), per_class=2)
    with pytest.raises(ConfigError, match=r"test/ has class folders that train/ lacks \(cow; train/ has cat, dog\).*"
                                          r"add train/cow or move test/cow out"):
        folder_module(root, tmp_path / "cache").prepare_data()


def test_linked_folders_and_files_that_are_not_regular_are_not_read(tmp_path):
    """A link to its own class folder (a loop) is not walked and a FIFO named like an image is not opened: with
    either, listing the folder would repeat images or block forever. A linked image file is an image."""
    import signal

    root = tmp_path / "images"
    write_image_folder(root, per_class=5)
    (root / "ants" / "loop").symlink_to(root / "ants", target_is_directory=True)
    os.mkfifo(root / "bees" / "pipe.png")
    (root / "bees" / "linked.png").symlink_to(root / "ants" / "000.png")
    signal.alarm(60)  # a regression blocks on the FIFO: fail the test instead of hanging the suite
    try:
        for path in (tmp_path / "cache", tmp_path / "cache2"):
            module = folder_module(root, path, val_size=1, test_size=1, **({} if path.name == "cache" else {"cache_max_gb": 0}))
            module.setup("fit")
            count = (sum(len(module.splits[s][0]) for s in ("train", "val", "test")) if module.cached
                     else sum(len(module.streamed.datasets[s]) for s in ("train", "val", "test")))
            assert count == 11, path.name  # 5 ants, 5 bees, 1 linked file
    finally:
        signal.alarm(0)
    listed = image_folders.image_files(root, ["ants", "bees"])
    assert all(image_folders.is_regular_file(path) and "loop" not in path.parts for path, _ in listed)


def test_the_class_count_is_read_from_the_folder_unless_given(tmp_path, make_config):
    from tinyvision.config import validate_train

    root = tmp_path / "images"
    write_image_folder(root, classes=("ants", "bees", "wasps"), per_class=2)
    settings = validate_train(make_config("data=folder", f"data.root={root}", run_dir=tmp_path / "run"))
    assert settings.data.num_classes == 3 and settings.config["data"]["num_classes"] == 3
    with pytest.raises(ConfigError, match=r"data.num_classes=2 but .* has 3 class folders: set data.num_classes=3"):
        folder_module(root, tmp_path / "cache", num_classes=2).prepare_data()
    with pytest.raises(ConfigError, match=r"data.num_classes=null: .*only data=folder counts its classes"):
        validate_train(make_config("data=mnist", "data.num_classes=null", run_dir=tmp_path / "run2"))


def test_a_folder_evaluated_by_a_folder_trained_model_keeps_the_models_class_map(tmp_path, make_config):
    """eval.py data=folder on another folder: its class folders are the model's classes by name, whatever subset it
    holds; a class folder the model was not trained on is refused."""
    from tinyvision.inference import datamodule_for, load_classifier
    from tinyvision.training import train

    trained_on = tmp_path / "trained_on"
    write_image_folder(trained_on, classes=("ants", "bees", "wasps"), per_class=6)
    train(make_config("data=folder", f"data.root={trained_on}", "data.image_size=32", f"data.cache_dir={tmp_path / 'c'}",
                      "trainer.max_epochs=1", run_dir=tmp_path / "run"))
    classifier = load_classifier(tmp_path / "run" / "checkpoints" / "last.ckpt")
    data = dict(classifier.run_config["data"], num_classes=None, test_size=2, cache_dir=str(tmp_path / "c"))
    only_wasps = tmp_path / "only_wasps"
    write_image_folder(only_wasps, classes=("bees", "wasps"), per_class=3)
    module = datamodule_for(classifier, dict(data, root=str(only_wasps)), str(tmp_path))
    module.setup("test")
    assert module.class_names == ["ants", "bees", "wasps"] and set(module.splits["test"][1].tolist()) <= {1, 2}
    with_moths = tmp_path / "with_moths"
    write_image_folder(with_moths, classes=("ants", "moths"), per_class=3)
    with pytest.raises(ConfigError, match=r"it has class folders that the checkpoint's model lacks \(moths; .*ants, bees, wasps"):
        datamodule_for(classifier, dict(data, root=str(with_moths)), str(tmp_path)).setup("test")


def test_a_class_folder_whose_name_is_not_utf8_trains_under_an_escaped_class_name(tmp_path):
    """The folder is read by its own bytes; its class name is written with them escaped (TensorBoard's tag writer, the
    CSV and JSON files refuse the surrogates Python keeps such bytes as)."""
    root = tmp_path / "images"
    write_image_folder(root, per_class=5)
    os.rename(os.fsencode(root / "bees"), os.fsencode(root) + b"/b\xe9es")
    module = folder_module(root, tmp_path / "cache", val_size=1, test_size=1)
    module.setup("fit")
    assert module.class_names == ["ants", "b\\xe9es"]
    assert sorted(set(torch.cat([module.splits[s][1] for s in ("train", "val", "test")]).tolist())) == [0, 1]
