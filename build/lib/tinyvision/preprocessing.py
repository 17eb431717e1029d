"""What turns stored images into a model's input, owned by the classifier and so saved in its checkpoint.

Images travel as uint8 (0-255) from disk to the device; the classifier normalizes them as its first
step, as torchvision's weights and timm's pretrained configs carry their transforms. Training, eval,
predict and an exported model therefore share one definition of the input.
"""

from __future__ import annotations

from collections.abc import Sequence

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
