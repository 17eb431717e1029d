"""Shape helpers shared by the architectures."""

from __future__ import annotations

import torch
from torch import nn

from tinyvision.preprocessing import as_hw


def flat_features(features: nn.Module, in_channels: int, image_size, model: str, min_size: int) -> int:
    """Number of features ``features`` yields for one image, or a clear error if the image is too small."""
    height, width = as_hw(image_size)
    if min(height, width) < min_size:
        raise ValueError(
            f"model {model} cannot take image_size={image_size}: it needs at least {min_size}x{min_size} pixels "
            f"(its pooling layers would shrink a smaller image to nothing). "
            f"Set data.image_size={min_size} or larger (the data is resized once at load time), or choose another model."
        )
    was_training = features.training
    features.eval()  # BatchNorm must not record the zeros used for sizing
    with torch.no_grad():
        size = features(torch.zeros(1, in_channels, height, width)).numel()
    features.train(was_training)
    return size
