"""A small fast net for the fast recipes: airbench's layout (Keller Jordan's CIFAR-10 speed runs) at a
width a CPU trains in minutes."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from tinyvision.models._shapes import flat_features
from tinyvision.models.registry import ClosedModelSettings, register_model
from tinyvision.schema import PositiveInt, spec


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv → 2×2 max-pool → BatchNorm → GELU → conv → BatchNorm → GELU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(out_channels), nn.GELU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.GELU(),
    )


class FastNetSettings(ClosedModelSettings):
    widths: Annotated[list[PositiveInt], Field(min_length=4, max_length=4)] = spec(
        "four channel counts (stem and three blocks), each 1 or more", "[24,48,96,96]")
    head_scale: Annotated[float, Field(gt=0)] = spec("a positive number", 0.2)


@register_model("fast_net", FastNetSettings)
class FastNet(nn.Module):
    """A 3×3 stem, three two-convolution blocks that each halve the image, a global max-pool and a linear
    head with a fixed scale. ``widths`` are the stem's and the blocks' channels."""

    min_image_size = 8

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size=32, widths: list[int] | tuple[int, ...] = (24, 48, 96, 96),
                 head_scale: float = 0.2):
        super().__init__()
        stem, *blocks = widths
        layers = [nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.GELU()]
        for width_in, width_out in zip([stem, *blocks[:-1]], blocks):
            layers.append(_block(width_in, width_out))
        self.features = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(flat_features(self.features, in_channels, image_size, "fast_net", self.min_image_size), num_classes,
                              bias=False)
        self.head_scale = head_scale  # airbench scales the logits down: softer early predictions, steadier training

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)) * self.head_scale
