"""Architectures: plain ``nn.Module`` classes that take ``in_channels``, ``num_classes`` and ``image_size``."""

from __future__ import annotations

from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from torch import nn

from tinyvision.errors import ConfigError
from tinyvision.models.cifar_net import CifarNet, CifarNetV3
from tinyvision.models.convnet import ConvNet
from tinyvision.models.lenet import LeNet
from tinyvision.models.mlp import MLP
from tinyvision.models.vgg import VGG16

__all__ = ["MLP", "VGG16", "CifarNet", "CifarNetV3", "ConvNet", "LeNet", "build_model"]


def build_model(model: dict[str, Any], in_channels: int, num_classes: int, image_size) -> nn.Module:
    """Instantiate the architecture described by a ``conf/model`` entry for data of the given shape."""
    settings = {key: value for key, value in model.items() if key not in {"compile", "channels_last"}}
    try:
        return hydra.utils.instantiate(
            settings, in_channels=in_channels, num_classes=num_classes, image_size=image_size, _convert_="all"
        )
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(str(cause)) from cause
        raise
