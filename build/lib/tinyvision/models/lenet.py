"""LeNet-5 of seed 002: sigmoid activations and average pooling (Fashion-MNIST, 0.804 after 10 epochs)."""

from torch import Tensor, nn

from tinyvision.models._shapes import flat_features
from tinyvision.models.registry import register_model


@register_model("lenet")
class LeNet(nn.Module):
    """The classic LeNet-5 with Xavier-uniform initialisation, as the seed trains it."""

    min_image_size = 12

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size=28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),  # B×C×28×28 -> B×6×28×28
            nn.Sigmoid(),
            nn.AvgPool2d(2),  # -> B×6×14×14
            nn.Conv2d(6, 16, kernel_size=5),  # -> B×16×10×10
            nn.Sigmoid(),
            nn.AvgPool2d(2),  # -> B×16×5×5
            nn.Flatten(),  # -> B×400
        )
        flat = flat_features(self.features, in_channels, image_size, "lenet", self.min_image_size)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, num_classes)
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
