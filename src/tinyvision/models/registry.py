"""Architectures found by name, each with its settings model: ``@register_model("lenet")`` on the class is all a
new architecture needs to be checked, composed and built (timm's ``register_model``, torchvision's ``get_model``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tinyvision.schema import Open, by_target, check, spec, with_signature_defaults


class ModelSettings(Open):
    """What every ``model`` entry takes besides its architecture's own arguments (``tinyvision.models.build_model``
    applies these); other keys are the class's (a user's own ``model._target_``)."""

    target: str = Field(alias="_target_")
    channels_last: bool = spec("true or false", True, True)  # NHWC convolutions: faster on this CPU (BENCHMARKS.md)
    compile: bool = spec("true or false", False, False)
    freeze: Literal["backbone"] | None = spec("null or backbone (train the head only)", "backbone", None)
    bn_momentum: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = spec(
        "null (the architecture's own) or a number above 0 up to 1", 0.6, None)


class ClosedModelSettings(ModelSettings):
    """A tinyvision architecture's settings: every key is known, a misspelt one is refused."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Registered:
    name: str  # the conf/model option and the ConfigStore node of its defaults: tinyvision/model/<name>
    cls: type
    settings: type[BaseModel]

    @property
    def target(self) -> str:
        return f"tinyvision.models.{self.cls.__name__}"


MODELS: dict[str, Registered] = {}


def register_model(name: str, settings: type[BaseModel] = ClosedModelSettings):
    """Register a class under ``name`` with ``settings``: the fields of its own arguments, whose defaults are taken
    from the constructor's signature (written there once)."""

    def add(cls: type) -> type:
        if name in MODELS and MODELS[name].cls is not cls:
            raise ValueError(f"two architectures registered as {name!r}: {MODELS[name].cls.__name__} and {cls.__name__}")
        MODELS[name] = Registered(name, cls, with_signature_defaults(settings, cls.__init__))
        return cls

    return add


def settings_by_target() -> dict[str, type[BaseModel]]:
    """The settings model of each registered class, by the ``_target_`` a config names it with."""
    return {registered.target: registered.settings for registered in MODELS.values()}


def model_settings(section: Mapping[str, Any], key: str = "model") -> ModelSettings:
    """A ``model`` section checked by its architecture's settings (a class tinyvision does not know: the common ones)."""
    return check(by_target(section, settings_by_target(), ModelSettings), section, key)
