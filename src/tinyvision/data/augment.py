"""Batched, per-image random augmentation on the device.

torchvision's v2 transforms draw one set of random parameters per call, so applied to a batch every
image gets the same crop; per-image crops would need one call per image. These two functions draw
per-image parameters and apply them to the whole batch in one indexing operation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def padding_ltrb(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """torchvision's padding convention: int, [left/right, top/bottom] or [left, top, right, bottom]."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = list(padding)
    if len(padding) == 1:
        return (padding[0],) * 4
    if len(padding) == 2:
        return padding[0], padding[1], padding[0], padding[1]
    if len(padding) == 4:
        return tuple(padding)
    raise ValueError(f"data.augment.crop_padding={padding} must be an int or a list of 2 or 4 ints")


def random_crop(images: Tensor, padding, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad each N×C×H×W image, then cut an H×W window at a random place per image."""
    left, top, right, bottom = padding_ltrb(padding)
    n, c, h, w = images.shape
    padded = F.pad(images, (left, right, top, bottom))
    dy = torch.randint(0, top + bottom + 1, (n, 1), device=images.device, generator=generator)
    dx = torch.randint(0, left + right + 1, (n, 1), device=images.device, generator=generator)
    rows = dy + torch.arange(h, device=images.device)  # N×H
    cols = dx + torch.arange(w, device=images.device)  # N×W
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def random_horizontal_flip(images: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
