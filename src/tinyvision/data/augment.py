"""Batched, per-image random augmentation on the device.

torchvision's v2 transforms draw one set of random parameters per call, so applied to a batch every
image gets the same crop; per-image crops would need one call per image. These functions draw per-image
parameters from the data module's (seed, epoch, rank) generator and apply them to the whole batch in a
few tensor operations, so a run is repeatable and a resumed one draws what it would have.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Annotated

import torch
from pydantic import Field, field_validator
from torch import Tensor
from torch.nn import functional as F

from tinyvision.schema import NonNegative, Probability, Section, ZeroOrOne, spec


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


def random_crop(images: Tensor, padding, generator: torch.Generator | None = None, mode: str = "constant") -> Tensor:
    """Pad each N×C×H×W image (zeros, or ``mode="reflect"``), then cut an H×W window at a random place per image."""
    left, top, right, bottom = padding_ltrb(padding)
    n, c, h, w = images.shape
    if mode == "reflect":
        padded = F.pad(images.float(), (left, right, top, bottom), mode="reflect").to(images.dtype)
    else:
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


def random_translate(images: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by up to ``max_shift`` pixels in each direction, the border filled by reflection
    (airbench's translate): a crop of the reflect-padded image at a random place per image."""
    return random_crop(images, max_shift, generator, mode="reflect")


def random_erasing(images: Tensor, p: float, generator: torch.Generator | None = None,
                   scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)) -> Tensor:
    """With probability ``p`` per image, set a rectangle of random area (``scale`` of the image) and aspect
    (``ratio``, drawn log-uniformly) at a random place to 0: torchvision's RandomErasing, drawn per image."""
    n, _, h, w = images.shape
    device = images.device
    draws = torch.rand(n, 5, device=device, generator=generator)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * draws[:, 0])
    log_low, log_high = torch.log(torch.tensor(ratio, device=device))
    aspect = torch.exp(log_low + (log_high - log_low) * draws[:, 1])
    eh = (area * aspect).sqrt().round().clamp(1, h).long()
    ew = (area / aspect).sqrt().round().clamp(1, w).long()
    top = (draws[:, 2] * (h - eh + 1)).long()
    left = (draws[:, 3] * (w - ew + 1)).long()
    erase = draws[:, 4] < p
    rows = torch.arange(h, device=device)[None, :]
    cols = torch.arange(w, device=device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # N×H
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # N×W
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None])[:, None]  # N×1×H×W
    return images.masked_fill(mask, 0)


def color_jitter(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Brightness, contrast and (for colour images) saturation, each scaled by a factor drawn per image
    from [1 - strength, 1 + strength]; torchvision's ColorJitter formulas, on the uint8 batch."""
    n, c = images.shape[:2]
    factors = 1 + strength * (2 * torch.rand(n, 3, 1, 1, 1, device=images.device, generator=generator) - 1)
    x = images.float() * factors[:, 0]  # brightness
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device)[:, None, None]
    grey = (x * weights).sum(1, keepdim=True) if c == 3 else x
    x = (x - grey.mean(dim=(1, 2, 3), keepdim=True)) * factors[:, 1] + grey.mean(dim=(1, 2, 3), keepdim=True)  # contrast
    if c == 3:
        grey = (x * weights).sum(1, keepdim=True)
        x = grey + (x - grey) * factors[:, 2]  # saturation
    return x.clamp(0, 255).round().to(images.dtype)


def random_grayscale(images: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """With probability ``p`` per image, its luma (ITU-R 601, torchvision's weights) in every channel: torchvision's
    RandomGrayscale, drawn per image. A grey (one-channel) batch is returned as it is."""
    if images.shape[1] != 3:
        return images
    grey = torch.rand(images.shape[0], device=images.device, generator=generator) < p
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device)[:, None, None]
    luma = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(images.dtype).expand_as(images)
    return torch.where(grey[:, None, None, None], luma, images)


def mix_batch(images: Tensor, labels: Tensor, num_classes: int, mixup_alpha: float, cutmix_alpha: float,
              key: Sequence[int]) -> tuple[Tensor, Tensor]:
    """MixUp or CutMix of a uint8 batch with itself in a shuffled order; the labels become soft (N×C, rows summing
    to 1). With both alphas above 0, each batch uses one of them with equal chance, as timm does.

    The draws come from a NumPy generator keyed by ``key`` (seed, rank, batch number): the same batch always
    gets the same mix, so a resumed run repeats it bit for bit, and nothing is read back from the device.
    torchvision's v2 MixUp and CutMix draw from torch's global generator instead. MixUp's blend is rounded
    back to uint8 (at most half a grey level off), as the classifier takes images as stored.
    """
    import numpy as np

    rng = np.random.default_rng(list(key))
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    order = torch.as_tensor(rng.permutation(images.shape[0])).to(images.device, non_blocking=True)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut_h, cut_w = int(height * (1 - lam) ** 0.5), int(width * (1 - lam) ** 0.5)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = images[order][..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)  # the share of the image that is its own
    else:
        images = (lam * images.float() + (1 - lam) * images[order].float()).round().to(images.dtype)
    one_hot = F.one_hot(labels, num_classes).float()
    return images, lam * one_hot + (1 - lam) * one_hot[order]


# TrivialAugment (Müller & Hutter, 2021): each image gets one operation, chosen uniformly, at a strength
# drawn uniformly; torchvision's TrivialAugmentWide draws one op for the whole call, so it is batched here.
TRIVIAL_OPS = ("identity", "brightness", "contrast", "color", "sharpness", "posterize", "solarize", "autocontrast",
               "rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def trivial_augment(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One of TRIVIAL_OPS per image at a random strength (torchvision's "wide" ranges), on a uint8 batch.
    Geometric ops share one grid_sample over the batch (identity matrices for the others); photometric ops
    are computed for the batch and kept where chosen."""
    n, c, h, w = images.shape
    device = images.device
    op = torch.randint(0, len(TRIVIAL_OPS), (n,), device=device, generator=generator)
    strength = torch.rand(n, device=device, generator=generator)
    sign = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
    chosen = {name: (op == index)[:, None, None, None] for index, name in enumerate(TRIVIAL_OPS)}
    x = images.float()

    # Geometric: rotate up to 135°, shear up to 0.99, translate up to 32 pixels (wide ranges), fill 0.
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    angle = torch.deg2rad(135.0 * strength * sign) * (op == TRIVIAL_OPS.index("rotate"))
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    theta[:, 0, 1] += 0.99 * strength * sign * (op == TRIVIAL_OPS.index("shear_x"))
    theta[:, 1, 0] += 0.99 * strength * sign * (op == TRIVIAL_OPS.index("shear_y"))
    theta[:, 0, 2] = 2 * 32 * strength * sign / w * (op == TRIVIAL_OPS.index("translate_x"))
    theta[:, 1, 2] = 2 * 32 * strength * sign / h * (op == TRIVIAL_OPS.index("translate_y"))
    geometric = (op >= TRIVIAL_OPS.index("rotate"))[:, None, None, None]
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    warped = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    x = torch.where(geometric, warped, x)

    # Photometric: factors in [0.01, 1.99] (wide), posterize to 2-8 bits, solarize above a random threshold.
    factor = (1 + 0.99 * strength * sign)[:, None, None, None]
    weights = torch.tensor([0.299, 0.587, 0.114], device=device)[:, None, None]
    grey = (x * weights).sum(1, keepdim=True) if c == 3 else x
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    bits = (8 - (6 * strength).round())[:, None, None, None]
    step = 2 ** (8 - bits)
    low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    candidates = {
        "brightness": x * factor,
        "contrast": (x - grey.mean(dim=(1, 2, 3), keepdim=True)) * factor + grey.mean(dim=(1, 2, 3), keepdim=True),
        "color": grey + (x - grey) * factor,
        "sharpness": blurred + (x - blurred) * factor,
        "posterize": torch.floor(x / step) * step,
        "solarize": torch.where(x >= 255 * (1 - strength)[:, None, None, None], 255 - x, x),
        "autocontrast": (x - low) * 255 / (high - low).clamp(min=1),
    }
    for name, value in candidates.items():
        x = torch.where(chosen[name], value, x)
    return x.clamp(0, 255).round().to(images.dtype)


# The image transforms in the order they run (erasing last, as torchvision orders it): the setting that switches each
# on, the function, and the argument the setting's value is given as. A new knob is a field below and a row here.
IMAGE_STEPS = (
    ("crop_padding", random_crop, "padding"),
    ("translate", random_translate, "max_shift"),
    ("horizontal_flip", random_horizontal_flip, "p"),
    ("color_jitter", color_jitter, "strength"),
    ("grayscale", random_grayscale, "p"),
    ("trivial_augment", trivial_augment, None),
    ("erasing", random_erasing, "p"),
)


class AugmentSettings(Section):
    """``data.augment``: what training batches go through, each transform off at its default."""

    # pad, then cut a window of the image's size at a random place (CIFAR's random crop)
    crop_padding: None | Annotated[int, Field(ge=0)] | list[Annotated[int, Field(ge=0)]] = spec(
        "null, a number of pixels (0 or more), or [left/right, top/bottom] or [left, top, right, bottom]", 4, None)
    horizontal_flip: Probability = spec("a probability from 0 to 1", 0.5, 0.0)
    # shift each image by up to this many pixels, reflect-padded (airbench's translate)
    translate: Annotated[int, Field(ge=0)] = spec("a whole number of pixels, 0 (off) or more", 2, 0)
    # brightness/contrast/saturation factors drawn per image from [1 - x, 1 + x]
    color_jitter: Annotated[float, Field(ge=0, le=1)] | ZeroOrOne = spec("a strength from 0 (off) to 1", 0.4, 0.0)
    # the probability that a colour image is made grey (its luma in every channel; grey images stay as they are)
    grayscale: Probability | ZeroOrOne = spec("a probability from 0 to 1 (not true or false)", 0.2, 0.0)
    # random erasing (cutout): the probability that an image gets a zeroed rectangle
    erasing: Probability | ZeroOrOne = spec("a probability from 0 to 1 (not true or false)", 0.25, 0.0)
    # TrivialAugment: one random operation per image at a random strength
    trivial_augment: bool = spec("true or false", True, False)
    # MixUp: blend each image with another, lambda ~ Beta(alpha, alpha); CutMix: paste a box of another image.
    # With both on, each batch uses one of them (mix_batch).
    mixup_alpha: NonNegative = spec("a number, 0 (off) or more", 0.2, 0.0)
    cutmix_alpha: NonNegative = spec("a number, 0 (off) or more", 1.0, 0.0)

    @field_validator("crop_padding")
    @classmethod
    def _padding_length(cls, value):
        if isinstance(value, list) and len(value) not in (1, 2, 4):
            raise ValueError("")
        return value

    def image_steps(self) -> list[Callable[..., Tensor]]:
        """The transforms switched on, in IMAGE_STEPS' order, each called as ``step(images, generator=...)``."""
        steps = []
        for key, transform, argument in IMAGE_STEPS:
            value = getattr(self, key)
            if value is None or (key != "crop_padding" and not value):
                continue
            steps.append(functools.partial(transform, **{argument: value}) if argument else transform)
        return steps

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0
