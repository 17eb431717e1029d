"""The two CIFAR-10 nets of seed 003."""

from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from tinyvision.models._shapes import flat_features
from tinyvision.models.registry import ClosedModelSettings, register_model
from tinyvision.schema import spec


@register_model("cifar_net")
class CifarNet(nn.Module):
    """Seed 003 §9.2: three 5×5 convolutions with max pooling and two linear layers, no activations."""

    min_image_size = 8

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size=32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),  # B×C×32×32 -> B×32×32×32
            nn.MaxPool2d(2),  # -> B×32×16×16
            nn.Conv2d(32, 32, kernel_size=5, padding=2),
            nn.MaxPool2d(2),  # -> B×32×8×8
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.MaxPool2d(2),  # -> B×64×4×4
            nn.Flatten(),  # -> B×1024
        )
        flat = flat_features(self.features, in_channels, image_size, "cifar_net", self.min_image_size)
        self.classifier = nn.Sequential(nn.Linear(flat, 64), nn.Linear(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _conv_relu_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    # The seed puts BatchNorm after the ReLU, not before it.
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(), nn.BatchNorm2d(out_channels)]


class CifarNetV3Settings(ClosedModelSettings):
    dropout: Annotated[float, Field(ge=0, lt=1)] = spec("a probability from 0 to below 1", 0.4)


@register_model("cifar_net_v3", CifarNetV3Settings)
class CifarNetV3(nn.Module):
    """Seed 003 §12.3 (CIFAR10_Net_Simple_v3, ~88%): six 3×3 convolutions, BatchNorm, Dropout 0.4."""

    min_image_size = 8

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size=32, dropout: float = 0.4):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_relu_bn(in_channels, 32), *_conv_relu_bn(32, 32), nn.MaxPool2d(2),  # -> B×32×16×16
            *_conv_relu_bn(32, 64), *_conv_relu_bn(64, 64), nn.MaxPool2d(2),  # -> B×64×8×8
            *_conv_relu_bn(64, 128), *_conv_relu_bn(128, 128), nn.MaxPool2d(2),  # -> B×128×4×4
            nn.Flatten(),  # -> B×2048
        )
        flat = flat_features(self.features, in_channels, image_size, "cifar_net_v3", self.min_image_size)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(flat, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
