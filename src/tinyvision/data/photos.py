"""Image files prepared the way a checkpoint's training images were made: a phone photo of a digit as
MNIST's digits were drawn, of a garment as Fashion-MNIST's, anything else resized (seed 004)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from tinyvision.preprocessing import InputDefinition, as_hw

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def find_images(inputs: str | Path) -> list[Path]:
    """The image files named by ``inputs``: one file, or every image below a directory."""
    path = Path(inputs)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]


def eight_bit(image: Image.Image, channels: int) -> Image.Image:
    """The image as 8-bit grey ("L") or colour ("RGB").

    PIL's own convert("L") clips 16-bit and 32-bit grey images (microscopy, scans, depth maps) at 255, so nearly
    every pixel turns white: their values are scaled instead, 16-bit by 1/257 (65535 -> 255), float on [0, 1] by
    255, 32-bit integer and other float images by their largest value when it exceeds 8 bits. Palette, alpha and CMYK images convert as PIL converts them."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        largest = float(values.max(initial=0))
        if image.mode.startswith("I;16"):
            top = 65535.0
        elif image.mode == "F" and largest <= 1.0:
            top = 1.0  # a float image on [0, 1]
        else:
            top = max(largest, 255.0)
        grey = Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
        return grey if channels == 1 else grey.convert("RGB")
    return image.convert("L" if channels == 1 else "RGB")


def preparation_style(dataset: str | None) -> str:
    """How photos are turned into inputs: as MNIST digits (EMNIST and KMNIST were made the same way), as
    Fashion-MNIST items, or a plain resize."""
    return {"mnist": "digit", "emnist": "digit", "kmnist": "digit", "fashion": "clothing"}.get(dataset or "", "plain")


def prepare_image(path: Path, given: InputDefinition, style: str) -> torch.Tensor:
    """Read ``path`` and return a uint8 C×H×W tensor shaped like the model's training images."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    height, width = given.height_width
    if style in ("digit", "clothing"):
        array = centred_like_mnist(eight_bit(image, 1), (height, width), box=0.72 if style == "digit" else 1.0,
                                   by_mass=style == "digit")
        tensor = torch.from_numpy(array).unsqueeze(0)
    else:
        image = eight_bit(image, given.channels).resize((width, height), Image.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image).copy())
        tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
    if tensor.shape[0] != given.channels:
        tensor = tensor.expand(given.channels, -1, -1).contiguous()
    return tensor


def centred_like_mnist(image: Image.Image, size: tuple[int, int], box: float, by_mass: bool) -> np.ndarray:
    """Prepare a grey photo as MNIST's digits were made: light ink on black, cropped to the ink, scaled
    so its longer side fills ``box`` of the frame (20 of 28 pixels for digits), and centred in the frame
    by its centre of mass (digits) or its bounding box (clothing)."""
    pixels = np.asarray(image, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if np.median(border) > pixels.mean():  # a light background: dark ink on paper
        pixels = 255 - pixels
    low, high = np.percentile(pixels, 50), pixels.max()
    pixels = np.clip((pixels - low) / max(high - low, 1.0), 0, 1)  # paper to 0, the strongest ink to 1
    ink = pixels > 0.25
    if not ink.any():
        return np.zeros(size, dtype=np.uint8)
    rows, cols = np.nonzero(ink)
    pixels = pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = size
    target = box * min(height, width)
    scale = target / max(pixels.shape)
    crop = Image.fromarray((pixels * 255).astype(np.uint8))
    if scale < 0.25:
        # A thin stroke in a large photo would fade away when shrunk: thicken it first (seed 004's misreads).
        crop = crop.filter(ImageFilter.MaxFilter(2 * int(0.125 / scale) + 1))
    new_size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    small = np.asarray(crop.resize(new_size, Image.LANCZOS), dtype=np.float32)
    frame = np.zeros(size, dtype=np.float32)
    if by_mass and small.sum() > 0:
        rows_idx, cols_idx = np.indices(small.shape)
        centre = (np.sum(rows_idx * small) / small.sum(), np.sum(cols_idx * small) / small.sum())
    else:
        centre = ((small.shape[0] - 1) / 2, (small.shape[1] - 1) / 2)
    top = int(round((height - 1) / 2 - centre[0]))
    left = int(round((width - 1) / 2 - centre[1]))
    top, left = min(max(top, 0), height - small.shape[0]), min(max(left, 0), width - small.shape[1])
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    return np.clip(frame, 0, 255).astype(np.uint8)
