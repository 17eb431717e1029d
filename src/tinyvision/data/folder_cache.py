"""A folder of images decoded once into a uint8 tensor file, reused while the folder is unchanged.

The cache is keyed by every image's path, size and modification time and by the decode settings
(channels, size), so a changed folder is decoded again and an unchanged one is read back in a second.
Decoding runs in DataLoader workers with the same torchvision transforms as the per-image path, so both
paths give the same pixels. Images that cannot be decoded are listed with their reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tinyvision.data.photos import eight_bit
from tinyvision.files import replacing

CACHE_VERSION = 2  # 2: images made 8-bit by photos.eight_bit before the transform


@dataclass
class Decoded:
    images: Tensor  # uint8 N×C×H×W, one row per readable file, in the order of ``files``
    labels: Tensor  # int64 N
    files: list[str]  # the readable files (relative to the folder)
    bad: list[tuple[str, str]]  # (file, reason) of those that could not be decoded


class EightBit:
    """A transform step: any PIL image as 8-bit grey or RGB (photos.eight_bit); a class, so workers can pickle it."""

    def __init__(self, channels: int):
        self.channels = channels

    def __call__(self, image):
        return eight_bit(image, self.channels)


def open_image(path: str):
    """ImageFolder's loader without its convert("RGB"), which clips 16-bit images: transform_for makes them 8-bit."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image


def transform_for(channels: int, hw: tuple[int, int]):
    """PIL image -> uint8 C×H×W tensor of the data's channels and size. Made 8-bit first: ToImage keeps a 16-bit
    PNG as uint16, which the decode workers cannot hand back and which would not fit the uint8 cache."""
    from torchvision.transforms import v2

    return v2.Compose([EightBit(channels), v2.ToImage(), v2.Resize(list(hw), antialias=True)])


def cache_key(root: Path, samples: list[tuple[Path, int]], channels: int, hw: tuple[int, int]) -> str:
    listing = []
    for path, label in samples:
        stat = path.stat()
        listing.append((str(path.relative_to(root)), label, stat.st_size, stat.st_mtime_ns))
    text = json.dumps({"version": CACHE_VERSION, "channels": channels, "hw": list(hw), "files": listing})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def decoded_bytes(count: int, channels: int, hw: tuple[int, int]) -> int:
    return count * channels * hw[0] * hw[1]


class _Decode(torch.utils.data.Dataset):
    def __init__(self, samples: list[tuple[Path, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, _ = self.samples[index]
        try:
            with Image.open(path) as image:
                image.load()
                return index, self.transform(image), None
        except Exception as error:  # a truncated, corrupt or unreadable file: reported, not fatal here
            return index, None, f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"


def decode(root: Path, samples: list[tuple[Path, int]], channels: int, hw: tuple[int, int], num_workers: int) -> Decoded:
    """Decode every file once, in workers, with a progress bar."""
    from rich.progress import Progress

    images = torch.empty((len(samples), channels, *hw), dtype=torch.uint8)
    readable = torch.zeros(len(samples), dtype=torch.bool)
    bad = []
    loader = torch.utils.data.DataLoader(_Decode(samples, transform_for(channels, hw)), batch_size=64, num_workers=num_workers,
                                         collate_fn=list)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"decoding {len(samples):,} images of {root} once", total=len(samples))
        for batch in loader:
            for index, image, reason in batch:
                if image is None:
                    bad.append((str(samples[index][0].relative_to(root)), reason))
                else:
                    images[index] = image
                    readable[index] = True
            progress.advance(task, len(batch))
    keep = readable.nonzero().flatten()
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    files = [str(samples[i][0].relative_to(root)) for i in keep.tolist()]
    return Decoded(images[keep].contiguous(), labels[keep], files, bad)


def load_or_decode(root: Path, samples: list[tuple[Path, int]], channels: int, hw: tuple[int, int], cache_dir: Path,
                   num_workers: int) -> tuple[Decoded, Path, bool]:
    """The decoded folder, read from the cache when its key matches, else decoded and written there
    (whole or not at all). Returns it, the cache file and whether it was read from the cache."""
    path = Path(cache_dir) / f"folder-{cache_key(root, samples, channels, hw)}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return Decoded(stored["images"], stored["labels"], stored["files"], [tuple(b) for b in stored["bad"]]), path, True
        except Exception:  # a cache file that cannot be read is decoded again and replaced
            pass
    decoded = decode(root, samples, channels, hw, num_workers)
    with replacing(path) as partial:
        torch.save({"images": decoded.images, "labels": decoded.labels, "files": decoded.files, "bad": decoded.bad}, partial)
    return decoded, path, False


def default_budget_bytes(device: torch.device) -> int:
    """Half of the training device's free memory: the decoded set shares it with the model and batches."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        with open("/proc/meminfo") as handle:
            available = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return available // 2
