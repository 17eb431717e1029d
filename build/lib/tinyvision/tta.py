"""Test-time augmentation: the classifier's class probabilities averaged over flipped and shifted views.

``flip`` averages the image and its mirror; ``flip_translate`` adds each of them shifted by one pixel
up-left and down-right (reflect padding), six views in all, as airbench's CIFAR-10 recipe does.
Probabilities (softmax) are averaged, not logits, so every view counts the same whatever its scale.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

MODES = ("none", "flip", "flip_translate")


def shifted(images: Tensor, dy: int, dx: int) -> Tensor:
    """Each image moved by (dy, dx) pixels, the uncovered border filled by reflection; dtype kept."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(images.dtype)
    height, width = images.shape[-2:]
    top, left = pad - dy, pad - dx
    return padded[..., top:top + height, left:left + width]


def views(images: Tensor, mode: str) -> list[Tensor]:
    if mode not in MODES:
        raise ValueError(f"tta={mode}: one of {', '.join(MODES)}")
    out = [images]
    if mode in ("flip", "flip_translate"):
        out.append(images.flip(-1))
    if mode == "flip_translate":
        out += [shifted(view, d, d) for view in list(out) for d in (-1, 1)]
    return out


def probabilities(model, images: Tensor, mode: str = "none") -> Tensor:
    """The mean over the views of ``model``'s softmax (model: images as stored -> logits)."""
    return torch.stack([model(view).float().softmax(dim=1) for view in views(images, mode)]).mean(dim=0)
