"""What turns stored images into a model's input, owned by the classifier and so saved in its checkpoint.

Images travel as uint8 (0-255) from disk to the device; the classifier normalizes them as its first
step, as torchvision's weights and timm's pretrained configs carry their transforms. Training, eval,
predict and an exported model therefore share one definition of the input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def as_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from a config's image_size: an int, or [height, width]."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


class Normalize(nn.Module):
    """uint8 N×C×H×W -> float32 ``(x / 255 - mean) / std``, in one fused multiply-add on the device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int):
        super().__init__()
        mean_t = torch.tensor([float(m) for m in mean]).expand(channels) if len(mean) == 1 else torch.tensor(mean)
        std_t = torch.tensor([float(s) for s in std]).expand(channels) if len(std) == 1 else torch.tensor(std)
        # Not saved in the state dict: the checkpoint's hyperparameters (data.mean, data.std) rebuild them.
        self.register_buffer("scale", (1 / (255 * std_t)).view(1, -1, 1, 1).clone(), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).view(1, -1, 1, 1).clone(), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)


@dataclass(frozen=True)
class InputDefinition:
    """What a classifier takes and gives: uint8 images of ``channels`` × ``image_size`` (an int, or (height, width)),
    normalized inside by ``mean`` and ``std`` (on [0, 1] values: one for every channel, or one per channel), into
    ``num_classes`` scores; ``dataset`` names the images it learned from (how a photo is prepared for it). Made once
    from the data settings, carried by the classifier, saved in its checkpoint as the plain dict ``data``
    (``as_config``), written on an export's card, and read back from either (``from_config``)."""

    channels: int
    image_size: int | tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str = "folder"

    @property
    def height_width(self) -> tuple[int, int]:
        return as_hw(self.image_size)

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> InputDefinition:
        """From a checkpoint's or a card's ``data`` (KeyError, TypeError or ValueError when it is not one)."""
        size = data["image_size"]

        def numbers(value: Any) -> tuple[float, ...]:
            return tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value]))

        given = cls(channels=int(data["channels"]), image_size=tuple(int(v) for v in size) if isinstance(size, (list, tuple))
                    else int(size), num_classes=int(data["num_classes"]), mean=numbers(data["mean"]), std=numbers(data["std"]),
                    dataset=str(data.get("dataset") or "folder"))  # a checkpoint from before datasets were named
        if any(len(values) not in (1, given.channels) for values in (given.mean, given.std)):
            raise ValueError(f"mean and std need one value, or one per channel ({given.channels})")
        return given

    def as_config(self) -> dict[str, Any]:
        size = list(self.image_size) if isinstance(self.image_size, tuple) else self.image_size
        return {"channels": self.channels, "image_size": size, "num_classes": self.num_classes, "mean": list(self.mean),
                "std": list(self.std), "dataset": self.dataset}
