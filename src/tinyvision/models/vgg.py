"""VGG16 transfer of seed 003 §11: torchvision's VGG16 with a new head."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

from tinyvision.boundaries import is_state_dict_mismatch, load_weights, weights_do_not_fit
from tinyvision.models._shapes import as_hw
from tinyvision.models.external import _grey_mean_std, _torchvision_net


class VGG16(nn.Module):
    """torchvision's VGG16 whose last linear layer is replaced by one with ``num_classes`` outputs.

    ``weights`` is a torchvision weights name (``IMAGENET1K_V1``, downloaded by torchvision when the
    network allows) and ``weights_path`` a local file holding the state dict of a torchvision VGG16;
    by default the net starts from random weights. VGG16 halves the image five times, so images
    smaller than 32×32 (MNIST's 28×28) are upsampled to 32×32 bilinearly inside the model, on the device.
    With other than 3 input channels the first convolution is replaced; with pretrained weights it
    starts from their sum over the RGB channels, so a grey image gives the response of a grey RGB one.
    """

    min_image_size = 32

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size=32,
        weights: str | None = None,
        weights_path: str | None = None,
        freeze_features: bool = False,
    ):
        super().__init__()
        if weights and weights_path:
            raise ValueError("model.weights and model.weights_path are both set: give one of them")
        weight_enum = torchvision.models.VGG16_Weights[weights] if weights and weights != "DEFAULT" else (
            torchvision.models.VGG16_Weights.DEFAULT if weights else None)
        net = _torchvision_net("vgg16", weights, weight_enum, lambda: torchvision.models.vgg16(weights=weights))
        if weights_path:
            fix = "give the path of a saved torchvision VGG16 state dict, or leave it empty to start from random weights"
            state = load_weights("model.weights_path", weights_path, fix)
            try:
                net.load_state_dict(state)
            except RuntimeError as error:
                if not is_state_dict_mismatch(error):
                    raise
                raise weights_do_not_fit("model.weights_path", weights_path, error, "torchvision's VGG16", fix) from None
        if in_channels != 3:
            first = net.features[0]
            net.features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
            if weights or weights_path:
                with torch.no_grad():
                    net.features[0].weight.copy_(first.weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
                    net.features[0].bias.copy_(first.bias)
        net.classifier[6] = nn.Linear(net.classifier[6].in_features, num_classes)
        if freeze_features:
            net.features.requires_grad_(False)
        # torchvision's VGG16 weights (by name or as a saved state dict) were trained on ImageNet's statistics.
        rgb = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        self.pretrained_mean_std = _grey_mean_std(*rgb, in_channels) if (weights or weights_path) else None
        self.net = net
        height, width = as_hw(image_size)
        self.upsample_to = (max(height, self.min_image_size), max(width, self.min_image_size))
        self.needs_upsample = self.upsample_to != (height, width)

    def head(self) -> nn.Module:
        return self.net.classifier[6]

    def forward(self, x: Tensor) -> Tensor:
        if self.needs_upsample:
            x = F.interpolate(x, size=self.upsample_to, mode="bilinear", align_corners=False)
        return self.net(x)
