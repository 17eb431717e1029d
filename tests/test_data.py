"""The data pipeline: real-format readers, their error messages, sample order and augmentation."""

from __future__ import annotations

import gzip
import pickle
import shutil

import pytest
import torch

from conftest import write_cifar10, write_idx_dataset
from tinyvision.data import TensorDataModule
from tinyvision.data.augment import random_crop, random_horizontal_flip
from tinyvision.data.batches import IndexSampler, TensorBatches
from tinyvision.data.sources import load
from tinyvision.errors import DataError


def test_idx_files_decode_once_into_uint8_tensors(data_root):
    splits = load("mnist", data_root, [], download=False)
    images, labels = splits.train
    assert images.dtype == torch.uint8 and images.shape == (400, 1, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (400,)
    assert splits.test[0].shape == (100, 1, 28, 28)
    assert len(splits.classes) == 10 and splits.classes[0] == "0 - zero"


def test_cifar10_batches_decode_with_class_names(data_root):
    splits = load("cifar10", data_root, [], download=False)
    assert splits.train[0].shape == (300, 3, 32, 32) and splits.test[0].shape == (100, 3, 32, 32)
    assert splits.classes[0] == "airplane"


def test_gz_files_in_a_mirror_are_extracted_and_used(tmp_path):
    mirror = tmp_path / "mirror"
    write_idx_dataset(mirror, sizes=(50, 20), gz=True)
    splits = load("fashion", tmp_path / "data", [str(mirror)], download=False)
    assert splits.train[0].shape == (50, 1, 28, 28)
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert splits.classes[0] == "T-shirt/top"


def test_missing_files_name_the_files_the_places_and_the_fix(tmp_path):
    with pytest.raises(DataError) as error:
        load("fashion", tmp_path, [str(tmp_path / "nowhere")], download=False)
    message = str(error.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message and str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message


def test_missing_cifar10_names_the_archive_and_the_places(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz.*Looked in: .*To get them"):
        load("cifar10", tmp_path, [], download=False)


def test_truncated_idx_file_is_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dataset(raw, sizes=(50, 20))
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=f"{path} is not a valid MNIST-format .* truncated"):
        load("mnist", tmp_path, [], download=False)


def test_truncated_gz_in_a_mirror_is_named(tmp_path):
    mirror = tmp_path / "mirror"
    write_idx_dataset(mirror, sizes=(50, 20), gz=True)
    archive = mirror / "t10k-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(DataError, match=f"{archive} cannot be extracted"):
        load("mnist", tmp_path / "data", [str(mirror)], download=False)
    assert not list((tmp_path / "data").rglob("t10k-images-idx3-ubyte")), "no half file is left behind"


def test_malformed_cifar_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=10, test=10)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3 is not a valid CIFAR-10 python batch"):
        load("cifar10", tmp_path, [], download=False)
    with open(folder / "data_batch_3", "wb") as handle:
        pickle.dump({"data": [[1, 2, 3]], "labels": [0]}, handle)
    with pytest.raises(DataError, match="data_batch_3 is not a valid CIFAR-10 python batch"):
        load("cifar10", tmp_path, [], download=False)


def test_images_and_labels_of_different_lengths_are_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dataset(raw, sizes=(50, 20))
    shutil.copy(raw / "t10k-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match="holds 50 images but .* holds 20 labels"):
        load("mnist", tmp_path, [], download=False)


def test_sample_order_is_a_pure_function_of_seed_epoch_and_rank():
    def order(seed, epoch, rank=0, world_size=1):
        sampler = IndexSampler(103, shuffle=True, seed=seed, rank=rank, world_size=world_size)
        sampler.set_epoch(epoch)
        return sampler.indices()

    assert torch.equal(order(1, 3), order(1, 3))
    assert not torch.equal(order(1, 3), order(1, 4)) and not torch.equal(order(1, 3), order(2, 3))
    shares = [order(1, 3, rank, 2) for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == 51  # equal shares, so DDP ranks step together
    assert not set(shares[0].tolist()) & set(shares[1].tolist())


def test_batches_cover_the_split_once_per_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    batches = TensorBatches(images, torch.arange(10), 4, IndexSampler(10, shuffle=True, seed=0))
    seen = torch.cat([labels for _, labels in batches])
    assert len(batches) == 3 and sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(x.view(-1).long(), y) for x, y in batches)


def test_random_crop_cuts_a_window_of_the_padded_image():
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).view(2, 3, 5, 5)
    assert torch.equal(random_crop(images, 0), images)
    padding = [0, 2, 3, 4]  # left, top, right, bottom, as torchvision reads it
    padded = torch.nn.functional.pad(images, (0, 3, 2, 4))
    generator = torch.Generator().manual_seed(0)
    crops = random_crop(images, padding, generator)
    assert crops.shape == images.shape and crops.dtype == torch.uint8
    for crop, full in zip(crops, padded):
        windows = [full[:, y : y + 5, x : x + 5] for y in range(7) for x in range(4)]
        assert any(torch.equal(crop, window) for window in windows)


def test_crop_offsets_differ_per_image():
    images = torch.ones(64, 1, 8, 8, dtype=torch.uint8)
    crops = random_crop(images, 4, torch.Generator().manual_seed(0))
    assert len({int(c.sum()) for c in crops}) > 1


def test_horizontal_flip_mirrors_the_chosen_images():
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(8, 1, 1, 1)
    assert torch.equal(random_horizontal_flip(images, p=1.0), images.flip(-1))
    assert torch.equal(random_horizontal_flip(images, p=0.0), images)


def test_channels_and_size_are_converted_once_at_load(data_root):
    datamodule = TensorDataModule(
        dataset="fashion", root=str(data_root), channels=3, image_size=32, num_classes=10, val_size=40,
    )
    datamodule.setup("fit")
    train_images, _ = datamodule.splits["train"]
    assert train_images.shape == (360, 3, 32, 32) and train_images.dtype == torch.uint8
    batch = next(iter(datamodule.train_dataloader()))
    images, _ = datamodule.on_after_batch_transfer(batch, 0)
    assert images.dtype == torch.uint8 and images.shape == (64, 3, 32, 32)  # the classifier normalizes


def test_validation_split_is_seeded_and_disjoint(data_root):
    def split(seed):
        datamodule = TensorDataModule(dataset="mnist", root=str(data_root), channels=1, image_size=28,
                                      num_classes=10, val_size=0.25, seed=seed)
        datamodule.setup("fit")
        return datamodule.splits

    first, again, other = split(1), split(1), split(2)
    assert len(first["val"][0]) == 100 and len(first["train"][0]) == 300
    assert torch.equal(first["val"][0], again["val"][0]) and not torch.equal(first["val"][0], other["val"][0])


def test_gz_idx_reader_matches_the_uncompressed_one(tmp_path):
    write_idx_dataset(tmp_path / "a" / "MNIST" / "raw", sizes=(30, 10), seed=5)
    write_idx_dataset(tmp_path / "mirror", sizes=(30, 10), seed=5, gz=True)
    plain = load("mnist", tmp_path / "a", [], download=False)
    from_gz = load("mnist", tmp_path / "b", [str(tmp_path / "mirror")], download=False)
    assert torch.equal(plain.train[0], from_gz.train[0]) and torch.equal(plain.test[1], from_gz.test[1])
    assert gzip.decompress((tmp_path / "mirror" / "train-labels-idx1-ubyte.gz").read_bytes())


def test_the_classifier_owns_the_normalization_of_its_inputs():
    """uint8 images go in; (x/255 - mean)/std per channel comes out of its first step, and a float input
    is taken as already normalized. The values come from the checkpoint's hyperparameters."""
    from tinyvision.module import ImageClassifier

    data = {"channels": 3, "image_size": 32, "num_classes": 10, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0]}
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    classifier = ImageClassifier(model={"_target_": "tinyvision.models.CifarNet"}, data=data, optimizer=sgd)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    expected = (images.float() / 255 - torch.tensor(data["mean"]).view(1, 3, 1, 1)) / torch.tensor(data["std"]).view(1, 3, 1, 1)
    assert torch.allclose(classifier.normalize(images), expected, atol=1e-6)
    classifier.eval()
    with torch.no_grad():
        assert torch.allclose(classifier(images), classifier(expected), atol=1e-5)
    grey = ImageClassifier(model={"_target_": "tinyvision.models.LeNet"}, optimizer=sgd,
                           data={**data, "channels": 1, "image_size": 28, "mean": [0.5], "std": [0.5]})
    assert torch.allclose(grey.normalize(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)), torch.ones(1, 1, 2, 2))


def test_two_processes_copying_the_same_dataset_at_once_both_get_it(tmp_path):
    """Two jobs of an array started together on one empty data folder both decompress the mirror's .gz files: each
    through a temporary folder of its own (a shared one let each delete the other's half-written file)."""
    import subprocess
    import sys

    mirror = tmp_path / "mirror"
    write_idx_dataset(mirror, sizes=(30000, 5000), gz=True)
    for name in list(mirror.iterdir()):
        if name.suffix != ".gz":
            name.unlink()
    # Both wait at a barrier (a file each), then read: their decompressions overlap.
    code = ("import sys, time, pathlib; from tinyvision.data.sources import load; here = pathlib.Path(sys.argv[3]); "
            "(here / sys.argv[4]).touch()\nwhile len(list(here.iterdir())) < 2: time.sleep(0.001)\n"
            "splits = load('fashion', sys.argv[1], [sys.argv[2]], False); print(len(splits.train[0]), len(splits.test[0]))")
    for attempt in range(3):
        root, barrier = tmp_path / f"data{attempt}", tmp_path / f"barrier{attempt}"
        barrier.mkdir()
        jobs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(mirror), str(barrier), str(n)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(2)]
        results = [job.communicate(timeout=300) for job in jobs]
        assert all(job.returncode == 0 for job in jobs), [err[-2000:] for _, err in results]
        assert [out.split() for out, _ in results] == [["30000", "5000"]] * 2
        assert not list((root / "FashionMNIST" / "raw").glob(".partial*"))
