"""Fully connected nets of seed 001 (MNIST)."""

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field
from torch import Tensor, nn

from tinyvision.models._shapes import as_hw
from tinyvision.models.registry import ClosedModelSettings, register_model
from tinyvision.schema import PositiveInt, one_of, spec

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}



class MLPSettings(ClosedModelSettings):
    hidden: list[PositiveInt] = spec("a list of layer widths, each 1 or more", "[128,64]")
    activation: Literal[tuple(ACTIVATIONS)] = spec(one_of(tuple(ACTIVATIONS)), "relu")
    init_std: Annotated[float, Field(gt=0)] | None = spec("a positive number, or null for PyTorch's init", 0.01)


@register_model("mlp", MLPSettings)
class MLP(nn.Module):
    """Flatten, then ``hidden`` linear layers with ``activation``, then a linear head.

    The seed ends in softmax; this net returns logits because the loss applies softmax itself.
    Weights start from N(0, ``init_std``) with zero bias, as the seed initialises them by hand.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size=28,
        hidden: Sequence[int] = (128, 64),
        activation: str = "relu",
        init_std: float | None = 0.01,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation={activation!r} is not known: choose one of {', '.join(ACTIVATIONS)}"
            )
        height, width = as_hw(image_size)
        sizes = [in_channels * height * width, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.layers = nn.Sequential(*layers)
        if init_std is not None:
            for module in self.layers:
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=init_std)
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
