"""Any architecture of timm or torchvision, shaped for the data: input channels, classes and image size.

Both keep their library's own head and first layer where they can: timm builds them for ``in_chans`` and
``num_classes`` itself; for torchvision the last linear layer (the head) and, for other than 3 channels,
the first convolution are replaced, starting a grey first layer from the RGB weights' sum as VGG16 does.
Pretrained weights come by name (downloaded by the library where the network allows) or from a local file
(``weights_path``: a state dict or safetensors file). With pretrained weights the net carries the mean and
std its weights were trained with (``pretrained_mean_std``), and the classifier normalizes by them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tinyvision.models._shapes import as_hw


def _load_file(path: str) -> dict[str, Tensor]:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"model.weights_path={path} does not exist: give a state dict (.pth/.pt) or a .safetensors file")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    state = torch.load(file, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _grey_mean_std(mean, std, channels: int) -> tuple[list[float], list[float]] | None:
    """The weights' RGB mean and std for ``channels`` input channels (one channel: their average)."""
    if mean is None or std is None:
        return None
    mean, std = list(mean), list(std)
    if channels == len(mean):
        return mean, std
    if channels == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    return None


class _Shaped(nn.Module):
    """Upsamples images smaller than the net's minimum (as VGG16 does) and checks the net takes the data."""

    def _finish(self, net: nn.Module, in_channels: int, image_size, min_size: tuple[int, int], name: str) -> None:
        self.net = net
        height, width = as_hw(image_size)
        self.upsample_to = (max(height, min_size[0]), max(width, min_size[1]))
        self.needs_upsample = self.upsample_to != (height, width)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                self.forward(torch.zeros(1, in_channels, height, width))
        except (RuntimeError, AssertionError, ValueError) as error:  # shape errors, torchvision's size asserts
            raise ValueError(f"model.name={name} cannot take {in_channels}×{height}×{width} images ({str(error).splitlines()[0][:160]}): "
                             f"set data.image_size to the size the architecture expects") from None
        net.train(was_training)

    def forward(self, x: Tensor) -> Tensor:
        if self.needs_upsample:
            x = F.interpolate(x, size=self.upsample_to, mode="bilinear", align_corners=False)
        return self.net(x)


class TimmModel(_Shaped):
    """``timm.create_model(name)`` with ``in_chans`` and ``num_classes`` from the data."""

    def __init__(self, name: str, in_channels: int = 3, num_classes: int = 10, image_size=224, pretrained: bool = False,
                 weights_path: str | None = None, **kwargs):
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ValueError("model=timm needs the timm package: pip install 'tinyvision[timm]'") from None
        if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
            close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
            raise ValueError(f"model.name={name}: a timm architecture name" + (f" (close: {', '.join(close)})" if close else "")
                             + ", e.g. model.name=resnet18")
        overlay = {"file": str(Path(weights_path))} if weights_path else None
        if weights_path and not Path(weights_path).is_file():
            _load_file(weights_path)  # raises the missing-file message
        height, width = as_hw(image_size)
        if "img_size" not in kwargs and _takes_img_size(timm, name):
            kwargs["img_size"] = (height, width)  # vision transformers are built for the data's size
        net = timm.create_model(name, pretrained=bool(pretrained or weights_path), in_chans=in_channels, num_classes=num_classes,
                                pretrained_cfg_overlay=overlay, **kwargs)
        config = getattr(net, "pretrained_cfg", {}) or {}
        pretrained = bool(pretrained or weights_path)
        self.pretrained_mean_std = _grey_mean_std(config.get("mean"), config.get("std"), in_channels) if pretrained else None
        self._finish(net, in_channels, image_size, (1, 1), name)

    def head(self) -> nn.Module:
        return self.net.get_classifier()


def _takes_img_size(timm, name: str) -> bool:
    """Transformer-like timm families are built for one image size: give them the data's."""
    return any(family in name for family in ("vit", "deit", "swin", "beit", "eva", "mixer", "cait", "xcit"))


class TorchvisionModel(_Shaped):
    """``torchvision.models.get_model(name)`` with its head (the last linear layer) made for the data's classes.

    ``weights`` is a weights name (``IMAGENET1K_V1`` or ``DEFAULT``); with ``weights_path`` as well, the file
    holds those weights (nothing is downloaded) and the name gives their mean, std and minimum size."""

    def __init__(self, name: str, in_channels: int = 3, num_classes: int = 10, image_size=224, weights: str | None = None,
                 weights_path: str | None = None):
        super().__init__()
        import torchvision

        if name not in torchvision.models.list_models():
            import difflib

            close = difflib.get_close_matches(name, torchvision.models.list_models(), n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise ValueError(f"model.name={name}: a torchvision classification architecture{hint}, e.g. model.name=resnet18")
        weight_enum = None
        if weights:
            try:
                weight_enum = torchvision.models.get_weight(f"{torchvision.models.get_model_weights(name).__name__}.{weights}")
            except (ValueError, KeyError, AttributeError):
                names = [w.name for w in torchvision.models.get_model_weights(name)] + ["DEFAULT"]
                raise ValueError(
                    f"model.weights={weights}: {name}'s weights are {', '.join(names)}, e.g. model.weights={names[0]}") from None
        net = torchvision.models.get_model(name, weights=None if weights_path else weight_enum)
        if weights_path:
            net.load_state_dict(_load_file(weights_path))
        pretrained = weight_enum is not None or weights_path is not None
        _replace_last_linear(net, num_classes)
        if in_channels != 3:
            _replace_first_conv(net, in_channels, keep=pretrained)
        meta = weight_enum.meta if weight_enum is not None else {}
        transforms = weight_enum.transforms() if weight_enum is not None else None
        self.pretrained_mean_std = _grey_mean_std(getattr(transforms, "mean", None), getattr(transforms, "std", None), in_channels)
        self._finish(net, in_channels, image_size, tuple(meta.get("min_size", (1, 1))), name)

    def head(self) -> nn.Module:
        return _last(self.net, nn.Linear)[1]


def _last(net: nn.Module, kind: type) -> tuple[str, nn.Module]:
    found = [(name, module) for name, module in net.named_modules() if isinstance(module, kind)]
    if not found:
        raise ValueError(f"{type(net).__name__} has no {kind.__name__} layer to replace")
    return found[-1]


def _set(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def _replace_last_linear(net: nn.Module, num_classes: int) -> None:
    name, last = _last(net, nn.Linear)
    _set(net, name, nn.Linear(last.in_features, num_classes))


def _replace_first_conv(net: nn.Module, in_channels: int, keep: bool) -> None:
    name, first = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    conv = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride, first.padding, first.dilation,
                     first.groups, first.bias is not None)
    if keep:
        with torch.no_grad():
            conv.weight.copy_(first.weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
            if first.bias is not None:
                conv.bias.copy_(first.bias)
    _set(net, name, conv)
