"""Any architecture of timm or torchvision, shaped for the data: input channels, classes and image size.

Both keep their library's own head and first layer where they can: timm builds them for ``in_chans`` and
``num_classes`` itself; for torchvision the last linear layer (the head) and, for other than 3 channels,
the first convolution are replaced, starting a grey first layer from the RGB weights' sum as VGG16 does.
Pretrained weights come by name (downloaded by the library where the network allows) or from a local file
(``weights_path``: a state dict or safetensors file). With pretrained weights the net carries the mean and
std its weights were trained with (``pretrained_mean_std``), and the classifier normalizes by them.

Weights named but not on this machine are downloaded only when their server answers a short connection
(tinyvision.boundaries): offline, the libraries retry for minutes; here one line names the file to fetch and the
setting to give it with. A weights file that cannot be read, or whose layers are not the architecture's, is one line.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tinyvision.boundaries import file_reason, first_answering, is_state_dict_mismatch, load_weights, weights_do_not_fit
from tinyvision.errors import ConfigError
from tinyvision.models._shapes import as_hw
from tinyvision.models.registry import ClosedModelSettings, ModelSettings, register_model
from tinyvision.schema import spec

WEIGHTS_FILE = "give a state dict (.pth/.pt) or a .safetensors file saved from that architecture"


def _load_file(path: str) -> dict[str, Tensor]:
    return load_weights("model.weights_path", path, WEIGHTS_FILE)


def _hub_cache() -> Path:
    """Where torch.hub (torchvision, and timm for weights given by URL) keeps downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _file_name(url: str) -> str:
    from urllib.parse import urlsplit

    return Path(urlsplit(url).path).name


def _torchvision_weights_here(key: str, value: str, name: str, weight_enum) -> Path | None:
    """The cached file of torchvision weights, None when it is not cached but its server answers (torchvision will
    download it), or one line saying which file to fetch and where to give it."""
    url = weight_enum.url
    cached = _hub_cache() / _file_name(url)
    if cached.is_file():
        return cached
    answering, reasons = first_answering([url])
    if answering is None:
        raise ConfigError(
            f"{key}={value}: torchvision's {name} weights ({weight_enum.name}) are not on this machine and cannot be "
            f"downloaded ({reasons}): download {url} where there is internet, then give the file, e.g. "
            f"model.weights_path={_file_name(url)} (with {key}={value} kept for their normalization), or put it in {cached.parent}/")
    return None


def _unreadable_cache(key: str, value: str, cached: Path, error: Exception) -> ConfigError:
    return ConfigError(f"{key}={value}: the downloaded weights {cached} cannot be read ({file_reason(cached, error, 'a PyTorch file')}): "
                       "delete the file to download it again, or give a copy with model.weights_path=FILE")


def _timm_weights_here(timm, name: str) -> dict | None:
    """For model.pretrained=true: timm's pretrained_cfg overlay that uses weights found on this machine, None when they
    are not here but their server answers (timm will download them), or one line saying which file to fetch."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(f"model.pretrained=true: timm has no pretrained weights for {name}: set model.pretrained=false, or "
                          f"give a weights file, e.g. model.weights_path={name}.safetensors")
    urls, cached = [], []
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                cached.append(Path(found))
        urls.append(f"{constants.ENDPOINT}/{repo}/resolve/main/{cfg.hf_hub_filename or 'model.safetensors'}")
        offline = constants.HF_HUB_OFFLINE
    else:
        offline = False
    if cfg.url:
        if (_hub_cache() / _file_name(cfg.url)).is_file():
            cached.append(_hub_cache() / _file_name(cfg.url))
        urls.append(cfg.url)
    if cached:
        try:
            return {"state_dict": load_weights("file", cached[0], "")}
        except ConfigError as error:
            raise _unreadable_cache("model.pretrained", "true", cached[0], error) from None
    answering, reasons = (None, "HF_HUB_OFFLINE is set") if offline and not cfg.url else first_answering(urls)
    if answering is None:
        raise ConfigError(
            f"model.pretrained=true: timm's {name} weights are not on this machine and cannot be downloaded ({reasons}): "
            f"download {urls[0]} where there is internet, then give the file, e.g. model.weights_path={_file_name(urls[0])}")
    return {"hf_hub_id": None} if answering == cfg.url and cfg.hf_hub_id else None  # the server that answers


IMAGENET_MEAN_STD = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # what torchvision's ImageNet weights were trained on


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


class TimmSettings(ModelSettings):  # other keys go to timm.create_model (drop_rate, ...)
    name: str = spec("a timm architecture name", "resnet18")
    pretrained: bool = spec("true or false", True)
    weights_path: str | None = spec("null or the path of a weights file (.safetensors or a state dict)", "resnet18.safetensors")


@register_model("timm", TimmSettings)
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
        # timm adapts the weights to in_chans and num_classes itself: they go to it as a state dict read here, so a file
        # that cannot be read, or is not there to be downloaded, is one line before timm is asked.
        if weights_path:
            overlay = {"state_dict": _load_file(weights_path)}
        elif pretrained:
            overlay = _timm_weights_here(timm, name)
        else:
            overlay = None
        height, width = as_hw(image_size)
        if "img_size" not in kwargs and _takes_img_size(timm, name):
            kwargs["img_size"] = (height, width)  # vision transformers are built for the data's size
        try:
            net = timm.create_model(name, pretrained=bool(pretrained or weights_path), in_chans=in_channels,
                                    num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs)
        except RuntimeError as error:
            if not is_state_dict_mismatch(error):
                raise
            key, value = ("model.weights_path", weights_path) if weights_path else ("model.pretrained", "true")
            raise weights_do_not_fit(key, value, error, f"timm's {name}",
                                     f"give the weights of a {name}, or set model.name to the architecture they were saved from"
                                     ) from None
        for config in (getattr(net, "pretrained_cfg", None), getattr(net, "default_cfg", None)):
            if isinstance(config, dict):
                config.pop("state_dict", None)  # loaded into the net: no second copy kept
        config = getattr(net, "pretrained_cfg", {}) or {}
        pretrained = bool(pretrained or weights_path)
        self.pretrained_mean_std = _grey_mean_std(config.get("mean"), config.get("std"), in_channels) if pretrained else None
        self._finish(net, in_channels, image_size, (1, 1), name)

    def head(self) -> nn.Module:
        return self.net.get_classifier()


def _takes_img_size(timm, name: str) -> bool:
    """Transformer-like timm families are built for one image size: give them the data's."""
    return any(family in name for family in ("vit", "deit", "swin", "beit", "eva", "mixer", "cait", "xcit"))


class TorchvisionSettings(ClosedModelSettings):
    name: str = spec("a torchvision classification architecture name", "resnet18")
    weights: str | None = spec("null or a weights name of that architecture", "IMAGENET1K_V1")
    weights_path: str | None = spec("null or the path of a state dict of those weights", "resnet18.pth")


@register_model("torchvision", TorchvisionSettings)
class TorchvisionModel(_Shaped):
    """``torchvision.models.get_model(name)`` with its head (the last linear layer) made for the data's classes.

    ``weights`` is a weights name (``IMAGENET1K_V1`` or ``DEFAULT``); with ``weights_path`` as well, the file
    holds those weights (nothing is downloaded) and the name gives their mean, std and minimum size."""

    def __init__(self, name: str, in_channels: int = 3, num_classes: int = 10, image_size=224, weights: str | None = None,
                 weights_path: str | None = None, min_size: tuple[int, int] = (1, 1)):
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
        if weights_path:
            state = _load_file(weights_path)
            net = torchvision.models.get_model(name, weights=None)
            try:
                net.load_state_dict(state)
            except RuntimeError as error:
                if not is_state_dict_mismatch(error):
                    raise
                raise weights_do_not_fit("model.weights_path", weights_path, error, f"torchvision's {name}",
                                         f"give the state dict of a torchvision {name}, or set model.name to the architecture "
                                         "it was saved from") from None
        else:
            net = _torchvision_net(name, weights, weight_enum, lambda: torchvision.models.get_model(name, weights=weight_enum))
        pretrained = weight_enum is not None or weights_path is not None
        _replace_last_linear(net, num_classes)
        if in_channels != 3:
            _replace_first_conv(net, in_channels, keep=pretrained)
        meta = weight_enum.meta if weight_enum is not None else {}
        transforms = weight_enum.transforms() if weight_enum is not None else None
        self.pretrained_mean_std = _grey_mean_std(getattr(transforms, "mean", None), getattr(transforms, "std", None), in_channels)
        smallest = tuple(max(a, b) for a, b in zip(meta.get("min_size", (1, 1)), min_size))  # the weights' or the net's own
        self._finish(net, in_channels, image_size, smallest, name)

    def head(self) -> nn.Module:
        return _last(self.net, nn.Linear)[1]


def _torchvision_net(name: str, weights: str | None, weight_enum, build) -> nn.Module:
    """``build()`` a torchvision net whose weights are named: from the cache, downloaded when their server answers, or
    one line saying which file to fetch."""
    if weight_enum is None:
        return build()
    cached = _torchvision_weights_here("model.weights", weights, name, weight_enum)
    try:
        return build()
    except Exception as error:
        if cached is None or is_state_dict_mismatch(error):
            raise
        raise _unreadable_cache("model.weights", weights, cached, error) from None


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
