"""ConvNet of seed 000 (MNIST, 99% test accuracy)."""

from torch import Tensor, nn
from torch.nn import functional as F

from tinyvision.models._shapes import flat_features
from tinyvision.models.registry import register_model


@register_model("convnet")
class ConvNet(nn.Module):
    """Two convolutions and two linear layers, ending in ``log_softmax`` as in the seed.

    Cross-entropy on log-probabilities equals the seed's NLL loss, because ``log_softmax`` is idempotent.
    """

    min_image_size = 10

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size=28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 10, kernel_size=5),  # B×C×28×28 -> B×10×24×24
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> B×10×12×12
            nn.Conv2d(10, 20, kernel_size=3),  # -> B×20×10×10
            nn.ReLU(),
            nn.Flatten(),  # -> B×2000
        )
        flat = flat_features(self.features, in_channels, image_size, "convnet", self.min_image_size)
        self.classifier = nn.Sequential(nn.Linear(flat, 500), nn.ReLU(), nn.Linear(500, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(self.classifier(self.features(x)), dim=1)
