"""Architectures: plain ``nn.Module`` classes that take ``in_channels``, ``num_classes`` and ``image_size``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from tinyvision.errors import ConfigError
from tinyvision.models.cifar_net import CifarNet, CifarNetV3
from tinyvision.models.convnet import ConvNet
from tinyvision.models.external import TimmModel, TorchvisionModel
from tinyvision.models.fast_net import FastNet
from tinyvision.models.lenet import LeNet
from tinyvision.models.mlp import MLP
from tinyvision.models.registry import MODELS, ModelSettings, model_settings, register_model
from tinyvision.models.vgg import VGG16
from tinyvision.schema import instantiate, show

__all__ = ["MLP", "MODELS", "VGG16", "CifarNet", "CifarNetV3", "ConvNet", "FastNet", "LeNet", "ModelSettings", "TimmModel",
           "TorchvisionModel", "build_model", "head_of", "model_settings", "register_model"]

# Keys every model entry takes that are tinyvision's (applied here), not the architecture's.
COMMON_KEYS = frozenset(ModelSettings.model_fields)


def build_model(model: ModelSettings | Mapping[str, Any], in_channels: int, num_classes: int, image_size) -> nn.Module:
    """The architecture a ``model`` section names, for data of the given shape; ``freeze: backbone`` leaves only its
    head (``head_of``) to train."""
    settings = model if isinstance(model, ModelSettings) else model_settings(model)
    arguments = settings.model_dump(exclude=COMMON_KEYS)  # the architecture's own (a user's class's: its other keys)
    try:
        net = instantiate(settings.target, {**arguments, "in_channels": in_channels, "num_classes": num_classes,
                                            "image_size": image_size})
    except TypeError as error:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if not unexpected:
            raise ConfigError(str(error)) from error
        # a key the class does not take: a user's model under another model's defaults, or a +key
        key = unexpected.group(1)
        raise ConfigError(f"model.{key}={show(arguments.get(key))}: {settings.target} takes no argument {key}: remove it "
                          f"(~model.{key}), or start from a model option without it (model=lenet "
                          f"model._target_={settings.target})") from None
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if settings.bn_momentum is not None:
        set_batchnorm_momentum(net, settings.bn_momentum)
    if settings.freeze == "backbone":
        net.requires_grad_(False)
        head_of(net).requires_grad_(True)
    return net


def set_batchnorm_momentum(net: nn.Module, momentum: float) -> None:
    """Every BatchNorm layer's running statistics take ``momentum`` of each new batch (PyTorch's default is 0.1).

    With a high learning rate and few steps (a small data set, large batches) the weights move faster than
    statistics at 0.1 follow: validation then normalizes with stale statistics and can sit at chance while
    training, which uses the batch's own, learns. airbench's speed-run nets use 0.6."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def head_of(net: nn.Module) -> nn.Module:
    """The layer that maps features to classes: the architecture's own ``head()``, else its last linear layer."""
    if callable(getattr(net, "head", None)) and not isinstance(net.head, nn.Module):
        return net.head()
    linears = [module for module in net.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(net).__name__} has no linear head: model.freeze and optimizer.backbone_lr_scale need one")
    return linears[-1]
