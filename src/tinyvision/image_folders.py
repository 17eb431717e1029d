"""Which classes and image files a folder of images holds: one class map per folder, taken from its training split.

Written here rather than taken from torchvision's ImageFolder because ImageFolder maps each split by its own class
folders (a ``test/{cat,cow}`` beside ``train/{cat,dog}`` scores the cows as dogs), follows linked folders (a link to a
parent folder is walked until the path is too long: every image counted again and again) and opens any file with an
image's suffix (a FIFO named ``x.png`` blocks its reader forever). The order of the files is ImageFolder's (class by
class, then the sorted folder paths, then the sorted names), so the splits carved from it are unchanged.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# torchvision.datasets.folder.IMG_EXTENSIONS, without importing torchvision for a file listing
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def split_roots(root: Path) -> dict[str, Path]:
    """The class roots of each split: ``train/`` and ``test/`` when both exist, else the folder itself as ``train``."""
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return {"train": root / "train", "test": root / "test"}
    return {"train": root}


def class_folders(split_root: Path) -> list[str]:
    """The class folders of one split, sorted (ImageFolder's order; a class folder may itself be a link)."""
    with os.scandir(split_root) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir())


def shown(name: str) -> str:
    """A folder's name as a class name others can write: a name that is not UTF-8 (Python keeps its bytes as
    surrogates) with those bytes escaped, b\\xe9es for b\xe9es; TensorBoard, CSV and JSON writers refuse surrogates."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_regular_file(path: str | os.PathLike) -> bool:
    """A regular file, or a link to one: never a FIFO, socket or device, which would block or stream their reader."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a broken link, or no permission to look
        return False


def _image_paths(folder: Path) -> list[Path]:
    """The image files under one class folder, in ImageFolder's order. Linked folders inside it are not entered
    (os.walk's followlinks=False), so a link loop is never walked; linked files are kept."""
    found = []
    for dirpath, _, filenames in sorted(os.walk(folder)):
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.lower().endswith(IMAGE_SUFFIXES) and is_regular_file(path):
                found.append(Path(path))
    return found


def holds_an_image(folder: Path) -> bool:
    for dirpath, _, filenames in os.walk(folder):
        if any(name.lower().endswith(IMAGE_SUFFIXES) and is_regular_file(os.path.join(dirpath, name)) for name in filenames):
            return True
    return False


def image_files(split_root: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    """Every image of one split as (path, class index), the index being the class's place in ``class_names``, the
    training split's classes, whichever split this is. A class without a folder in this split has no images in it."""
    samples = []
    for index, name in enumerate(class_names):
        folder = Path(split_root) / name
        if folder.is_dir():
            samples += [(path, index) for path in _image_paths(folder)]
    return samples
