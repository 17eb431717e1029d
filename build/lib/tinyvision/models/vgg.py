"""VGG16 transfer of seed 003 §11: torchvision's VGG16 with a new head, through the torchvision adapter."""

from __future__ import annotations

from pydantic import field_validator

from tinyvision.models.external import IMAGENET_MEAN_STD, TorchvisionModel, _grey_mean_std
from tinyvision.models.registry import ClosedModelSettings, register_model
from tinyvision.schema import spec


class VGG16Settings(ClosedModelSettings):
    weights: str | None = spec("null or a torchvision VGG16 weights name", "IMAGENET1K_V1")
    weights_path: str | None = spec("null or the path of a VGG16 state dict", "vgg16.pth")
    freeze_features: bool = spec("true or false", True)

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, value):
        if value is not None:
            from torchvision.models import VGG16_Weights

            names = [w.name for w in VGG16_Weights] + ["DEFAULT"]
            if value not in names:
                raise ValueError(f"one of {', '.join(names)}")
        return value


@register_model("vgg16", VGG16Settings)
class VGG16(TorchvisionModel):
    """torchvision's VGG16 whose last linear layer is replaced by one with ``num_classes`` outputs.

    ``weights`` is a torchvision weights name (``IMAGENET1K_V1``, downloaded by torchvision when the
    network allows) and ``weights_path`` a local file holding the state dict of a torchvision VGG16;
    by default the net starts from random weights. VGG16 halves the image five times, so images
    smaller than 32×32 (MNIST's 28×28) are upsampled to 32×32 bilinearly inside the model, on the device.
    With other than 3 input channels the first convolution is replaced; with pretrained weights it
    starts from their sum over the RGB channels, so a grey image gives the response of a grey RGB one.
    """

    min_image_size = 32

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size=32, weights: str | None = None,
                 weights_path: str | None = None, freeze_features: bool = False):
        if weights and weights_path:
            raise ValueError("model.weights and model.weights_path are both set: give one of them")
        super().__init__("vgg16", in_channels, num_classes, image_size, weights, weights_path,
                         min_size=(self.min_image_size, self.min_image_size))
        if weights_path:  # a saved torchvision VGG16: trained on ImageNet's statistics, as the named weights are
            self.pretrained_mean_std = _grey_mean_std(*IMAGENET_MEAN_STD, in_channels)
        if freeze_features:
            self.net.features.requires_grad_(False)
