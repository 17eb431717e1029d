"""Find, fetch and decode MNIST, Fashion-MNIST, KMNIST, EMNIST, CIFAR-10, CIFAR-100 and SVHN into uint8 tensors.

Files are looked for in the torchvision layout under ``root`` first, then in mirror directories
(Debian's ``dataset-fashion-mnist`` among the defaults), and only then downloaded by torchvision,
which checks their MD5 sums. Mirror files are not checked against those sums (Debian recompresses
the archives, so their sums differ); every file is checked for its format when it is decoded.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import extract_archive

from tinyvision.boundaries import first_answering
from tinyvision.errors import DataError


@dataclass
class Splits:
    """Each split as (images uint8 N×C×H×W, labels int64 N), plus the class names."""

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: list[str]


IDX_DATASETS = {"mnist": torchvision.datasets.MNIST, "fashion": torchvision.datasets.FashionMNIST,
                "kmnist": torchvision.datasets.KMNIST, "emnist": torchvision.datasets.EMNIST}
DATASETS = ("mnist", "fashion", "kmnist", "emnist", "cifar10", "cifar100", "svhn")
EMNIST_SPLITS = torchvision.datasets.EMNIST.splits
CIFAR100_FILES = ["train", "test", "meta"]
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]

HOW_TO_GET = {
    "mnist": "run once on a machine with internet (data.download=true fetches them through torchvision), "
    "or copy the four files (.gz is fine) into {place}",
    "fashion": "on Debian or Ubuntu run `apt-get install dataset-fashion-mnist` (files land in "
    "/usr/share/datasets/fashion-mnist, a default mirror), run once with internet (data.download=true), "
    "or copy the four files (.gz is fine) into {place}",
    "cifar10": "run once on a machine with internet (data.download=true fetches them through torchvision), "
    "or put cifar-10-python.tar.gz or its extracted cifar-10-batches-py folder into {place}",
    "kmnist": "run once on a machine with internet (data.download=true fetches them through torchvision), "
    "or copy the four files (.gz is fine) into {place}",
    "emnist": "run once on a machine with internet (data.download=true fetches gzip.zip through torchvision), "
    "or copy the split's four emnist-<split>-*-ubyte files (.gz is fine) into {place}",
    "cifar100": "run once on a machine with internet (data.download=true fetches them through torchvision), "
    "or put cifar-100-python.tar.gz or its extracted cifar-100-python folder into {place}",
    "svhn": "run once on a machine with internet (data.download=true fetches them through torchvision), "
    "or copy train_32x32.mat and test_32x32.mat into {place}",
}


def fetch(dataset: str, root: str | os.PathLike, mirrors: list[str], download: bool, split: str | None = None) -> dict[str, Path]:
    """Make sure the files of ``dataset`` are on disk (extracting or downloading them); return their paths.
    ``split`` is EMNIST's (byclass, bymerge, balanced, letters, digits, mnist)."""
    root, mirrors = Path(root), [Path(m) for m in mirrors]
    if dataset in IDX_DATASETS:
        return _fetch_idx(dataset, root, mirrors, download, split)
    if dataset in ("cifar10", "cifar100"):
        return _fetch_cifar(dataset, root, mirrors, download)
    if dataset == "svhn":
        return _fetch_svhn(root, mirrors, download)
    raise DataError(f"data.dataset={dataset!r} is not known: choose {', '.join(DATASETS)}")


def load(dataset: str, root: str | os.PathLike, mirrors: list[str], download: bool, split: str | None = None,
         label_type: str = "fine") -> Splits:
    """Decode ``dataset`` once into tensors; ``label_type`` picks CIFAR-100's fine (100) or coarse (20) labels."""
    files = fetch(dataset, root, mirrors, download, split)
    if dataset in IDX_DATASETS:
        stems = _idx_stems(dataset, split)
        train, test = _read_idx(files, stems["train"]), _read_idx(files, stems["test"])
        if dataset == "emnist":  # EMNIST stores each image transposed: turn it upright, as MNIST's are
            train, test = (train[0].transpose(2, 3).contiguous(), train[1]), (test[0].transpose(2, 3).contiguous(), test[1])
            classes = list(torchvision.datasets.EMNIST.classes_split_dict[split or "balanced"])
        else:
            classes = list(IDX_DATASETS[dataset].classes)
        return Splits(train=train, test=test, classes=classes)
    if dataset == "cifar100":
        return _read_cifar100(files, label_type)
    if dataset == "svhn":
        return _read_svhn(files)
    return _read_cifar10(files)


def _why(path: Path, error: BaseException) -> str:
    """A reader's failure in words: an empty file says so (EOFError's own text is empty), else the error's first line."""
    try:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            return "the file is empty (0 bytes)"
    except OSError:
        pass
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def _unreachable(cls) -> str | None:
    """Why torchvision cannot download ``cls``'s files here, found with one short connection to each of its servers
    (tinyvision.boundaries), or None when one answers. Offline, torchvision's own attempt can wait minutes per file."""
    if cls is torchvision.datasets.EMNIST:
        urls = [cls.url]  # EMNIST inherits MNIST's mirrors but downloads its own archive
    else:
        urls = list(getattr(cls, "mirrors", None) or []) or ([cls.url] if getattr(cls, "url", None) else [])
        urls += [entry[0] for entry in (getattr(cls, "split_list", None) or {}).values()]
    if not urls:
        return None
    answering, reasons = first_answering(urls)
    return None if answering is not None else f"Downloading is impossible here: {reasons}. "


def _missing(dataset: str, files: list[str], places: list[Path], reason: str | None) -> DataError:
    searched = ", ".join(str(place) for place in places)
    fix = HOW_TO_GET[dataset].format(place=places[0])
    return DataError(f"{dataset} files not found: {', '.join(files)}. Looked in: {searched}. {reason or ''}To get them: {fix}.")


def _idx_stems(dataset: str, split: str | None) -> dict[str, tuple[str, str]]:
    if dataset != "emnist":
        return IDX_FILES
    split = split or "balanced"
    return {part: (f"emnist-{split}-{name}-images-idx3-ubyte", f"emnist-{split}-{name}-labels-idx1-ubyte")
            for part, name in (("train", "train"), ("test", "test"))}


def _fetch_idx(dataset: str, root: Path, mirrors: list[Path], download: bool, split: str | None = None) -> dict[str, Path]:
    cls = IDX_DATASETS[dataset]
    raw = root / cls.__name__ / "raw"
    stems = [stem for pair in _idx_stems(dataset, split).values() for stem in pair]
    extra = {"split": split or "balanced"} if dataset == "emnist" else {}

    def locate(stem: str) -> Path | None:
        if (raw / stem).is_file():
            return raw / stem
        for mirror in mirrors:
            if (mirror / stem).is_file():
                return mirror / stem
            archive = mirror / f"{stem}.gz"
            if archive.is_file():
                return _extract(archive, raw)
        return None

    found = {stem: locate(stem) for stem in stems}
    missing = [stem for stem, path in found.items() if path is None]
    reason = "Downloading is off (data.download=false). " if not (missing and download) else _unreachable(cls)
    if missing and download and reason is None:
        try:
            cls(str(root), train=True, download=True, **extra)
            found = {stem: locate(stem) for stem in stems}
            missing = [stem for stem, path in found.items() if path is None]
        except Exception as error:  # torchvision raises RuntimeError, URLError or OSError here
            reason = f"Downloading through torchvision failed: {error}. "
    if missing:
        raise _missing(dataset, missing, [raw, *mirrors], reason)
    return found


def _read_idx(files: dict[str, Path], stems: tuple[str, str]) -> tuple[Tensor, Tensor]:
    image_path, label_path = (files[stem] for stem in stems)
    images = _read(image_path, read_image_file, "MNIST-format (idx3) image")
    labels = _read(label_path, read_label_file, "MNIST-format (idx1) label")
    if len(images) != len(labels):
        raise DataError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
    return images.unsqueeze(1), labels.long()


def _extract(archive: Path, destination: Path) -> Path:
    """Decompress ``archive`` into ``destination`` through a temporary folder of this process's own (two jobs of an
    array may start together on a shared data folder), so no half file is left and neither spoils the other's."""
    destination.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=destination))
    try:
        extract_archive(str(archive), str(partial))
    except Exception as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(
            f"{archive} cannot be extracted ({_why(archive, error)}); it may be truncated: "
            "replace it with a complete copy or remove it"
        ) from error
    for extracted in partial.iterdir():  # one file for a .gz, one folder for CIFAR-10's .tar.gz
        target = destination / extracted.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(extracted, target)
    partial.rmdir()
    return target


def _read(path: Path, reader, what: str) -> Tensor:
    try:
        return reader(str(path))
    except Exception as error:
        raise DataError(
            f"{path} is not a valid {what} file ({_why(path, error)}); "
            "it may be truncated: delete it and run again to fetch a fresh copy"
        ) from error


def _fetch_cifar(dataset: str, root: Path, mirrors: list[Path], download: bool) -> dict[str, Path]:
    cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    needed = CIFAR_FILES if dataset == "cifar10" else CIFAR100_FILES
    folder_name, archive_name = cls.base_folder, cls.filename
    candidates = [root / folder_name, *(m / folder_name for m in mirrors), *mirrors]

    def locate() -> Path | None:
        for folder in candidates:
            if all((folder / name).is_file() for name in needed):
                return folder
        for mirror in mirrors:
            archive = mirror / archive_name
            if archive.is_file():
                _extract(archive, root)
                return root / folder_name
        return None

    folder = locate()
    reason = "Downloading is off (data.download=false). " if not (folder is None and download) else _unreachable(cls)
    if folder is None and download and reason is None:
        try:
            cls(str(root), train=False, download=True)
            folder = locate()
        except Exception as error:  # torchvision raises RuntimeError, URLError or OSError here
            reason = f"Downloading through torchvision failed: {error}. "
    if folder is None:
        raise _missing(dataset, [archive_name, *needed], [root, *mirrors], reason)
    return {name: folder / name for name in needed}


def _read_cifar10(files: dict[str, Path]) -> Splits:
    folder = files["batches.meta"].parent
    train = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    meta = _unpickle(folder / "batches.meta")
    try:
        classes = [str(name) for name in meta["label_names"]]
    except (KeyError, TypeError) as error:
        raise DataError(f"{folder / 'batches.meta'} has no 'label_names' list: it is not a CIFAR-10 meta file") from error
    images, labels = zip(*train)
    return Splits(
        train=(torch.cat(images), torch.cat(labels)), test=_read_cifar_batch(folder / "test_batch"), classes=classes
    )


def _unpickle(path: Path) -> dict:
    # torchvision's CIFAR10 class insists on the official MD5 of every batch, so it cannot read other
    # files in the same format; the format itself is a pickled dict, read here as torchvision does.
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except Exception as error:
        raise DataError(
            f"{path} is not a valid CIFAR-10 python batch ({_why(path, error)}); "
            "it may be truncated: delete the cifar-10-batches-py folder and run again to fetch a fresh copy"
        ) from error


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    entry = _unpickle(path)
    try:
        data = torch.as_tensor(entry["data"], dtype=torch.uint8)
        labels = torch.as_tensor(entry.get("labels", entry.get("fine_labels")), dtype=torch.long)
        images = data.reshape(-1, 3, 32, 32)  # rows hold 1024 red, then green, then blue values
    except Exception as error:
        raise DataError(
            f"{path} is not a valid CIFAR-10 python batch ({_why(path, error)}); "
            "delete the cifar-10-batches-py folder and run again to fetch a fresh copy"
        ) from error
    if len(images) != len(labels):
        raise DataError(f"{path} holds {len(images)} images but {len(labels)} labels")
    return images, labels


def _matched(path: Path, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """A split's images and labels, refused when their counts differ (a truncated or mixed-up file)."""
    if len(images) != len(labels):
        raise DataError(f"{path} holds {len(images)} images but {len(labels)} labels")
    return images, labels


def _read_cifar100(files: dict[str, Path], label_type: str) -> Splits:
    meta = _unpickle(files["meta"])
    key = f"{label_type}_label_names"
    if key not in meta:
        raise DataError(f"{files['meta']} has no '{key}' list: it is not a CIFAR-100 meta file")

    def split(name: str) -> tuple[Tensor, Tensor]:
        entry = _unpickle(files[name])
        try:
            images = torch.as_tensor(entry["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
            labels = torch.as_tensor(entry[f"{label_type}_labels"], dtype=torch.long)
        except Exception as error:
            raise DataError(f"{files[name]} is not a valid CIFAR-100 python file ({_why(files[name], error)}); "
                            "delete the cifar-100-python folder and run again to fetch a fresh copy") from error
        return _matched(files[name], images, labels)

    return Splits(train=split("train"), test=split("test"), classes=[str(n) for n in meta[key]])


def _fetch_svhn(root: Path, mirrors: list[Path], download: bool) -> dict[str, Path]:
    folder = root / "SVHN"

    def locate() -> dict[str, Path] | None:
        for place in (folder, *mirrors):
            if all((place / name).is_file() for name in SVHN_FILES.values()):
                return {part: place / name for part, name in SVHN_FILES.items()}
        return None

    found = locate()
    reason = ("Downloading is off (data.download=false). " if not (found is None and download)
              else _unreachable(torchvision.datasets.SVHN))
    if found is None and download and reason is None:
        try:
            for part in SVHN_FILES:
                torchvision.datasets.SVHN(str(folder), split=part, download=True)
            found = locate()
        except Exception as error:  # torchvision raises RuntimeError, URLError or OSError here
            reason = f"Downloading through torchvision failed: {error}. "
    if found is None:
        raise _missing("svhn", list(SVHN_FILES.values()), [folder, *mirrors], reason)
    return found


def _read_svhn(files: dict[str, Path]) -> Splits:
    from scipy.io import loadmat  # the .mat format SVHN ships in, read as torchvision reads it

    def split(path: Path) -> tuple[Tensor, Tensor]:
        try:
            mat = loadmat(str(path))
            images = torch.as_tensor(mat["X"], dtype=torch.uint8).permute(3, 2, 0, 1).contiguous()  # H W C N -> N C H W
            labels = torch.as_tensor(mat["y"].astype("int64")).flatten() % 10  # SVHN labels the digit 0 as 10
        except Exception as error:
            raise DataError(f"{path} is not a valid SVHN .mat file ({_why(path, error)}); "
                            "delete it and run again to fetch a fresh copy") from error
        return _matched(path, images, labels)

    return Splits(train=split(files["train"]), test=split(files["test"]), classes=[str(d) for d in range(10)])
