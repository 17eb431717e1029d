"""The declared type and range of every tinyvision config key, checked before anything is built.

pydantic holds the schema: each group is a model whose fields say what they accept (``allowed``) and
give an example, and ``validate_train``/``validate_eval``/``validate_predict`` turn the first violation
into one ConfigError line: ``KEY=VALUE: what is allowed, e.g. KEY=example``. pydantic rather than Hydra
structured configs because its ranges, unions and cross-field checks are declarations, where
OmegaConf's structured configs check types only; the YAML files stay as they are and stay the defaults.

Lightning's Trainer arguments are Lightning's to check (``trainer_error`` words its refusal the same
way); only what Lightning accepts silently (a negative ``max_epochs``) is declared here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tinyvision import boundaries, slurm
from tinyvision.data import sources
from tinyvision.errors import ConfigError
from tinyvision.hparams import PRUNE_ON, SUMMARY_METRICS
from tinyvision.tta import MODES as TTA_MODES


def one_of(values: Sequence[Any]) -> str:
    """The allowed values in words, from the owning module's constant: 'none, flip or flip_translate'."""
    words = ["null" if value is None else str(value) for value in values]
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]


def spec(allowed: str, example: Any, default: Any = ..., **constraints: Any) -> Any:
    """A field with its rule in words and an example value, both used in the error line."""
    return Field(default, description=allowed, json_schema_extra={"example": example}, **constraints)


class Section(BaseModel):
    """Strict types (no "3" for 3, no true for 1), finite numbers (no inf, no nan: a library takes them and fails an
    epoch later), and unknown keys refused (a misspelt ``+key``). Subclasses' model_config merge into this one."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


class Open(Section):
    """A section whose other keys belong to a class we do not know (a user's own model or optimizer)."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True, allow_inf_nan=False)


PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0)] | Annotated[int, Field(ge=0)]  # strict mode: 1 and 1.0 both
# Whole-number ends of a range written as ints (0 for 0.0, 1 for 1.0): strict ints, so true and false are refused
# (a Literal[0, 1] would take true for 1).
ZeroOrOne = Annotated[int, Field(ge=0, le=1)]
Zero = Annotated[int, Field(ge=0, le=0)]
# The largest image side accepted: one batch of 64 colour 4096×4096 images is 3.2 GB as uint8 and 12.9 GB as the
# float input of the first layer, before any activation; larger sides are a typo (100000) or need tiling, not resizing.
MAX_IMAGE_SIDE = 4096
ImageSide = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]


# ---------------------------------------------------------------------------------------------- top level


class Paths(Section):
    data_dir: str = spec("a directory path", "data")
    output_dir: str = spec("a directory path", "outputs/runs/my_run")


class Loss(Section):
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] | Zero = spec("a number from 0 to below 1", 0.1, 0.0)
    class_weights: Literal["auto"] | Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=2)] | None = spec(
        "null, auto or a list of positive weights, one per class", "auto", None)


class Slurm(Section):
    auto_requeue: bool = spec("true or false", True, True)
    requeue_signal: Literal[slurm.REQUEUE_SIGNALS] = spec("USR1 or USR2 (what sbatch --signal sends)", "USR1", "USR1")


class TopLevel(Open):
    tta: Literal[TTA_MODES] = spec(one_of(TTA_MODES), "flip", "none")
    seed: int = spec("a whole number from 0 to 4294967295", 42, ge=0, le=2**32 - 1)
    resume: str | None = spec("the folder of a run under outputs/, or null", "outputs/runs/<run>", None)
    paths: Paths = spec("data_dir and output_dir", "data", None)
    slurm: Slurm = spec("auto_requeue and requeue_signal", "USR1", None)


# ---------------------------------------------------------------------------------------------- data


class Augment(Section):
    crop_padding: None | Annotated[int, Field(ge=0)] | list[Annotated[int, Field(ge=0)]] = spec(
        "null, a number of pixels (0 or more), or [left/right, top/bottom] or [left, top, right, bottom]", 4, None
    )
    horizontal_flip: Probability = spec("a probability from 0 to 1", 0.5, 0.0)
    translate: Annotated[int, Field(ge=0)] = spec("a whole number of pixels, 0 (off) or more", 2, 0)
    color_jitter: Annotated[float, Field(ge=0, le=1)] | ZeroOrOne = spec("a strength from 0 (off) to 1", 0.4, 0.0)
    erasing: Probability | ZeroOrOne = spec("a probability from 0 to 1 (not true or false)", 0.25, 0.0)
    trivial_augment: bool = spec("true or false", True, False)
    mixup_alpha: NonNegative = spec("a number, 0 (off) or more", 0.2, 0.0)
    cutmix_alpha: NonNegative = spec("a number, 0 (off) or more", 1.0, 0.0)

    @field_validator("crop_padding")
    @classmethod
    def _padding_length(cls, value):
        if isinstance(value, list) and len(value) not in (1, 2, 4):
            raise ValueError("")
        return value


class Data(Section):
    target: str = Field(alias="_target_")
    dataset: Literal[sources.DATASETS] | None = spec(one_of(sources.DATASETS), "fashion", None)
    split: Literal[sources.EMNIST_SPLITS] | None = spec(f"EMNIST's {one_of(sources.EMNIST_SPLITS)}", "balanced", None)
    label_type: Literal["fine", "coarse"] = spec("fine (100 classes) or coarse (20 superclasses)", "fine", "fine")
    root: str = spec("a directory path", "data")
    mirrors: list[str] = spec("a list of directories", "[/usr/share/datasets/fashion-mnist]", [])
    download: bool = spec("true or false", True, True)
    channels: Literal[1, 3] = spec("1 (grey) or 3 (colour)", 3)
    image_size: ImageSide | Annotated[list[ImageSide], Field(min_length=2, max_length=2)] = spec(
        f"a size in pixels from 1 to {MAX_IMAGE_SIDE}, or [height, width]", 32
    )
    num_classes: int = spec("a whole number, 2 or more", 10, ge=2)
    mean: Annotated[list[float], Field(min_length=1)] = spec("one number, or one per channel", "[0.5]")
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = spec(
        "one positive number, or one per channel (0 would divide by zero)", "[0.25]"
    )
    batch_size: PositiveInt = spec("a whole number of images, 1 or more", 64)
    eval_batch_size: PositiveInt = spec("a whole number of images, 1 or more", 256)
    val_size: PositiveInt | Annotated[float, Field(gt=0, lt=1)] = spec(
        "a number of images (1 or more) or a fraction between 0 and 1", 0.1
    )
    train_size: PositiveInt | Annotated[float, Field(gt=0, le=1)] | None = spec(
        "null (all), a number of images (1 or more) or a fraction from 0 to 1", 5000, None
    )
    test_size: PositiveInt | Annotated[float, Field(gt=0, lt=1)] = spec(
        "a number of images (1 or more) or a fraction between 0 and 1", 0.2, 0.2
    )
    num_workers: int = spec("a whole number, 0 or more", 2, 2, ge=0)
    cache_max_gb: Annotated[float, Field(ge=0)] | Annotated[int, Field(ge=0)] | None = spec(
        "a number of gigabytes, 0 or more, or null (half the device's free memory)", 2, None)
    cache_dir: str = spec("a directory path", "data/cache", "data/cache")
    skip_bad_images: bool = spec("true or false", True, True)
    seed: int = spec("a whole number, 0 or more", 42, ge=0)
    test_every_epoch: bool = spec("true or false", True, False)
    augment: Augment = Field(default_factory=Augment)

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _one_number_is_a_list(cls, value):
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _ints_are_numbers(cls, value):
        if isinstance(value, list):
            return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("image_size", mode="before")
    @classmethod
    def _fits_in_memory(cls, value):
        sides = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and v > MAX_IMAGE_SIDE for v in sides):
            largest = 64 * 3 * 4 * MAX_IMAGE_SIDE**2 / 1e9
            raise ConfigValueError("image_size", value, f"at most {MAX_IMAGE_SIDE} pixels a side: a batch of 64 colour "
                                   f"{MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} images is already {largest:.1f} GB as the model's "
                                   "input; a larger side is a typo, or needs tiling rather than resizing", 224)
        return value

    @model_validator(mode="after")
    def _per_channel(self):
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, self.channels):
                allowed = "one value" + (f" or {self.channels}" if self.channels > 1 else "")
                raise ConfigValueError(key, values, f"{allowed} (data.channels={self.channels})", "[0.5]")
        return self

    @model_validator(mode="after")
    def _shifts_inside_the_image(self):
        """A translation reflects the image into its border, which needs fewer pixels than the image has; a crop
        padded by as much as the image may hold none of it."""
        from tinyvision.data.augment import padding_ltrb
        from tinyvision.preprocessing import as_hw

        height, width = as_hw(self.image_size)
        size = f"{height}×{width} images (data.image_size={show(self.image_size)})"
        shift = self.augment.translate
        if shift >= min(height, width):
            raise ConfigValueError("augment.translate", shift, f"less than the image's side: at most {min(height, width) - 1} "
                                   f"pixels for {size}", min(2, min(height, width) - 1))
        padding = self.augment.crop_padding
        if padding is not None:
            left, top, right, bottom = padding_ltrb(padding)
            if max(left, right) >= width or max(top, bottom) >= height:
                raise ConfigValueError("augment.crop_padding", padding, f"less than the image's side: at most {width - 1} "
                                       f"pixels left and right, {height - 1} top and bottom, for {size}",
                                       min(4, min(height, width) - 1))
        return self


# ---------------------------------------------------------------------------------------------- model


class Model(Open):
    target: str = Field(alias="_target_")
    channels_last: bool = spec("true or false", True, True)
    compile: bool = spec("true or false", False, False)
    freeze: Literal["backbone"] | None = spec("null or backbone (train the head only)", "backbone", None)
    bn_momentum: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = spec(
        "null (the architecture's own) or a number above 0 up to 1", 0.6, None)


class Plain(Model):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class CifarNetV3(Plain):
    dropout: Annotated[float, Field(ge=0, lt=1)] = spec("a probability from 0 to below 1", 0.4, 0.4)


class MLP(Plain):
    hidden: list[PositiveInt] = spec("a list of layer widths, each 1 or more", "[128,64]", [128, 64])
    activation: Literal["relu", "sigmoid", "tanh", "gelu"] = spec("relu, sigmoid, tanh or gelu", "relu", "relu")
    init_std: Annotated[float, Field(gt=0)] | None = spec("a positive number, or null for PyTorch's init", 0.01, None)


class VGG16(Plain):
    weights: str | None = spec("null or a torchvision VGG16 weights name", "IMAGENET1K_V1", None)
    weights_path: str | None = spec("null or the path of a VGG16 state dict", "vgg16.pth", None)
    freeze_features: bool = spec("true or false", True, False)

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, value):
        if value is not None:
            from torchvision.models import VGG16_Weights

            names = [w.name for w in VGG16_Weights] + ["DEFAULT"]
            if value not in names:
                raise ValueError(f"one of {', '.join(names)}")
        return value


class Timm(Open):  # other keys go to timm.create_model (drop_rate, ...)
    target: str = Field(alias="_target_")
    channels_last: bool = spec("true or false", True, True)
    compile: bool = spec("true or false", False, False)
    freeze: Literal["backbone"] | None = spec("null or backbone (train the head only)", "backbone", None)
    bn_momentum: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = spec(
        "null (the architecture's own) or a number above 0 up to 1", 0.6, None)
    name: str = spec("a timm architecture name", "resnet18")
    pretrained: bool = spec("true or false", True, False)
    weights_path: str | None = spec("null or the path of a weights file (.safetensors or a state dict)", "resnet18.safetensors", None)


class Torchvision(Plain):
    name: str = spec("a torchvision classification architecture name", "resnet18")
    weights: str | None = spec("null or a weights name of that architecture", "IMAGENET1K_V1", None)
    weights_path: str | None = spec("null or the path of a state dict of those weights", "resnet18.pth", None)


class FastNet(Plain):
    widths: Annotated[list[PositiveInt], Field(min_length=4, max_length=4)] = spec(
        "four channel counts (stem and three blocks), each 1 or more", "[24,48,96,96]", [24, 48, 96, 96])
    head_scale: Annotated[float, Field(gt=0)] = spec("a positive number", 0.2, 0.2)


MODELS = {
    "tinyvision.models.FastNet": FastNet,
    "tinyvision.models.TimmModel": Timm,
    "tinyvision.models.TorchvisionModel": Torchvision,
    "tinyvision.models.LeNet": Plain,
    "tinyvision.models.ConvNet": Plain,
    "tinyvision.models.CifarNet": Plain,
    "tinyvision.models.CifarNetV3": CifarNetV3,
    "tinyvision.models.MLP": MLP,
    "tinyvision.models.VGG16": VGG16,
}


# ---------------------------------------------------------------------------------------------- optimizer


class Optimizer(Open):
    target: str = Field(alias="_target_")
    partial: bool = Field(True, alias="_partial_")
    lr: Annotated[float, Field(gt=0)] = spec("a positive number", 0.01)
    backbone_lr_scale: NonNegative = spec("a number, 0 or more (1: the same lr everywhere)", 0.1, 1.0)
    weight_decay: Annotated[float, Field(ge=0)] = spec("a number, 0 or more", 0.0005, 0.0)


class SGD(Optimizer):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
    momentum: Annotated[float, Field(ge=0, lt=1)] = spec("a number from 0 to below 1", 0.9, 0.0)
    nesterov: bool = spec("true or false", True, False)
    dampening: Annotated[float, Field(ge=0, le=1)] = spec("a number from 0 to 1", 0.0, 0.0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigValueError("nesterov", True, "only with momentum above 0 and no dampening",
                                   "true optimizer.momentum=0.9")
        return self


class Adam(Optimizer):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = spec(
        "two numbers from 0 to below 1", "[0.9,0.999]", [0.9, 0.999]
    )
    eps: Annotated[float, Field(gt=0)] = spec("a positive number", 1e-8, 1e-8)
    amsgrad: bool = spec("true or false", False, False)


OPTIMIZERS = {"torch.optim.SGD": SGD, "torch.optim.Adam": Adam, "torch.optim.AdamW": Adam}


# ---------------------------------------------------------------------------------------------- scheduler


class Scheduler(Open):
    target: str = Field(alias="_target_")
    partial: bool = Field(True, alias="_partial_")
    interval: Literal["epoch", "step"] = spec("epoch or step", "epoch", "epoch")
    warmup_epochs: NonNegative = spec(
        "a number of epochs, 0 or more (fractions allowed)", 1, 0)


class WarmupOnly(Section):  # scheduler=none: a constant lr, after an optional warm-up
    warmup_epochs: NonNegative = spec(
        "a number of epochs, 0 or more (fractions allowed)", 1, 0)


class Closed(Scheduler):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class StepLR(Closed):
    step_size: PositiveInt = spec("a whole number of epochs, 1 or more", 10)
    gamma: Annotated[float, Field(gt=0)] = spec("a positive factor", 0.1, 0.1)


class MultiStepLR(Closed):
    milestones: Annotated[list[PositiveInt], Field(min_length=1)] = spec(
        "a rising list of epochs, each 1 or more", "[8,16,24]"
    )
    gamma: Annotated[float, Field(gt=0)] = spec("a positive factor", 0.5, 0.1)

    @field_validator("milestones")
    @classmethod
    def _rising(cls, value):
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("")
        return value


class CosineAnnealingLR(Closed):
    T_max: Literal["auto"] | PositiveInt = spec("auto (trainer.max_epochs) or a number of epochs, 1 or more", "auto")
    eta_min: Annotated[float, Field(ge=0)] = spec("a number, 0 or more", 0.0, 0.0)


class OneCycleLR(Closed):
    warmup_epochs: Zero | Annotated[float, Field(ge=0, le=0)] = spec("0: one-cycle warms up by itself (scheduler.pct_start)",
                                                                       0, 0)
    max_lr: Literal["auto"] | Annotated[float, Field(gt=0)] = spec("auto (the optimizer's lr) or a positive number", "auto")
    # OneCycleLR divides by (total_steps - 1): one step is a ZeroDivisionError; fewer than the run's optimizer steps
    # end the run when the schedule runs out (checked against the data at fit start: tinyvision.boundaries.FitChecks).
    total_steps: Literal["auto"] | Annotated[int, Field(ge=2)] = spec(
        "auto (every batch of the run) or a number of steps, 2 or more (at least the run's)", "auto")
    pct_start: Annotated[float, Field(gt=0, lt=1)] = spec("a fraction between 0 and 1", 0.3, 0.3)
    anneal_strategy: Literal["cos", "linear"] = spec("cos or linear (with the linear rise: triangular)", "linear", "cos")


SCHEDULERS = {
    "torch.optim.lr_scheduler.StepLR": StepLR,
    "torch.optim.lr_scheduler.MultiStepLR": MultiStepLR,
    "torch.optim.lr_scheduler.CosineAnnealingLR": CosineAnnealingLR,
    "torch.optim.lr_scheduler.OneCycleLR": OneCycleLR,
}


# ---------------------------------------------------------------------------------------------- trainer, callbacks


class Trainer(Open):
    """The Trainer arguments Lightning takes without a check; the rest Lightning checks itself."""

    max_epochs: int | None = spec("a whole number, 1 or more (-1: no limit)", 10, None)
    min_epochs: Annotated[int, Field(ge=0)] | None = spec("a whole number, 0 or more", 1, None)
    log_every_n_steps: PositiveInt = spec("a whole number, 1 or more", 50, 50)
    accumulate_grad_batches: PositiveInt = spec("a whole number of batches, 1 or more", 4, 1)
    gradient_clip_val: Annotated[float, Field(gt=0)] | Annotated[int, Field(gt=0)] | None = spec(
        "a positive number, or null (no clipping)", 1.0, None)
    check_val_every_n_epoch: PositiveInt | None = spec("a whole number of epochs, 1 or more", 1, 1)
    # Lightning takes any truthy value here (deterministic=maybe) as true.
    deterministic: bool | Literal["warn"] | None = spec("true, false or warn (deterministic where PyTorch can be, warn where not)",
                                                        True, None)

    @field_validator("max_epochs")
    @classmethod
    def _epochs(cls, value):
        if value is not None and value < 1 and value != -1:
            raise ValueError("")
        return value

    @model_validator(mode="before")
    @classmethod
    def _device_here(cls, values):
        """Lightning's own refusal of a missing GPU names no setting ("No supported gpu backend found!")."""
        accelerator = values.get("accelerator") if isinstance(values, Mapping) else None
        if accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigValueError("accelerator", accelerator, "no GPU is available here (PyTorch finds no CUDA device): "
                                       "train on the CPU with trainer=cpu, or let Lightning choose with trainer.accelerator=auto",
                                       "cpu")
        return values


class LossCheck(Open):
    check_every_n_steps: PositiveInt = spec("a whole number of steps, 1 or more", 50, 50)
    read_on_cpu: bool = spec("true or false", True, True)


class LastCheckpoint(Open):
    every_n_train_steps: PositiveInt | None = spec("a whole number of steps, 1 or more, or null", 500, None)


class Bar(Open):
    refresh_seconds: NonNegative = spec("a number of seconds, 0 or more", 0.1, 0.1)


class Pictures(Open):
    input_grid: bool = spec("true or false", True, True)
    confusion_matrix: bool = spec("true or false", True, True)
    misclassified: Annotated[int, Field(ge=0)] | bool = spec("a number of images, 0 or more", 16, 16)
    per_class_accuracy: bool = spec("true or false", True, True)


class Ema(Open):
    decay: Annotated[float, Field(ge=0, lt=1)] | Zero = spec("a number from 0 (off) to below 1", 0.999, 0.0)
    start_step: Annotated[int, Field(ge=0)] = spec("a whole number of steps, 0 or more", 0, 0)
    warmup_power: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = spec(
        "null (a fixed decay) or a number above 0 up to 1", 0.6667, 2 / 3)


class TestReport(Open):
    top_k: PositiveInt = spec("a whole number, 1 or more", 3, 3)
    pr_curves: bool = spec("true or false", True, True)


# What ImageClassifier logs with self.log (tinyvision/module.py): per epoch, train/* at the end of the training epoch,
# val/* at the end of validation, test/* in validation only with data.test_every_epoch (and in the final test).
LOGGED_METRICS = ("val/acc", "val/loss", "val/acc_best", "train/acc", "train/loss", "train/lr", "test/acc", "test/loss")


class Monitor(Open):
    """ModelCheckpoint's and EarlyStopping's metric: Lightning finds a misspelt one missing only after the first
    validation, and stops the run there."""

    monitor: str | None = spec("a metric the model logs: " + ", ".join(LOGGED_METRICS), "val/acc", None)
    mode: Literal["min", "max"] = spec("min or max", "max", "min")

    @field_validator("monitor")
    @classmethod
    def _logged(cls, value):
        if value is not None and value not in LOGGED_METRICS:
            close = difflib.get_close_matches(value, LOGGED_METRICS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigValueError("monitor", value, f"not a metric the model logs; {hint}(it logs {', '.join(LOGGED_METRICS)})",
                                   close[0] if close else "val/acc")
        return value

    @model_validator(mode="after")
    def _direction(self):
        """The best checkpoint of a loss is its lowest, of an accuracy its highest: the other mode keeps the worst."""
        metric = self.monitor or ""
        wanted = "min" if metric.endswith("/loss") else "max" if metric.endswith(("/acc", "/acc_best")) else None
        if wanted is not None and self.mode != wanted:
            raise ConfigValueError("mode", self.mode, f"{wanted} for monitor={metric} (the other way keeps the worst epoch)",
                                   wanted)
        return self


CALLBACKS = {"stop_on_non_finite_loss": LossCheck, "last_checkpoint": LastCheckpoint, "pictures": Pictures,
             "test_report": TestReport, "progress_bar": Bar, "ema": Ema}
CALLBACK_TARGETS = {"lightning.pytorch.callbacks.ModelCheckpoint": Monitor, "lightning.pytorch.callbacks.EarlyStopping": Monitor,
                    "lightning.pytorch.callbacks.early_stopping.EarlyStopping": Monitor,
                    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint": Monitor}


# ---------------------------------------------------------------------------------------------- loggers

MLFLOW_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


class MLflow(Open):
    experiment_name: str = spec("a name", "tinyvision", "tinyvision")
    tracking_uri: str | None = spec(f"a tracking URI ({', '.join(s + ':' for s in MLFLOW_SCHEMES)}) or null",
                                    "sqlite:///outputs/mlflow.db", None)
    artifact_location: str | None = spec("null or a directory or URI", "outputs/mlartifacts", None)
    run_name: str | None = spec("null (the run dir's name) or a name", "my_run", None)
    log_model: bool | Literal["all"] = spec("true, false or all", False, False)

    @field_validator("tracking_uri")
    @classmethod
    def _scheme(cls, value):
        scheme = value.split(":", 1)[0] if value and "://" in value else None
        if scheme is not None and scheme.split("+")[0] not in MLFLOW_SCHEMES:
            raise ValueError("")
        return value


LOGGERS = {"lightning.pytorch.loggers.MLFlowLogger": MLflow}


# ---------------------------------------------------------------------------------------------- hparams_search


class Search(Open):
    metric: Literal[SUMMARY_METRICS] = spec(one_of(SUMMARY_METRICS), "val/acc_best")
    direction: Literal["maximize", "minimize"] = spec("maximize or minimize", "maximize")
    prune_on: Literal[PRUNE_ON] = spec(one_of(PRUNE_ON), "val/acc", None)
    n_trials: PositiveInt = spec("a whole number, 1 or more", 20)
    n_jobs: int = spec("a whole number, 1 or more (-1: one per CPU core)", 1, 1)
    params: dict[str, Any] = spec("key: range pairs", "{}", {})
    enqueue: list[dict[str, Any]] = spec("a list of parameter sets", "[]", [])
    storage: str | None = spec("null or a database URL", "sqlite:///study.db", None)
    study_name: str | None = spec("null or a name", "lenet", None)
    resume: str | None = spec("null or a sweep folder", "outputs/multirun/<sweep>", None)
    trial: int | None = spec("set by the sweeper", 0, None)

    @field_validator("n_jobs")
    @classmethod
    def _jobs(cls, value):
        if value < 1 and value != -1:
            raise ValueError("")
        return value

    @field_validator("storage")
    @classmethod
    def _database(cls, value):
        """A URL SQLAlchemy cannot use (bogus://x) fails in SQLAlchemy with NoSuchModuleError; no connection is made here."""
        problem = boundaries.database_url_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value


# ---------------------------------------------------------------------------------------------- eval, predict


class EvalConfig(Open):
    ckpt_path: str = spec("the path of a .ckpt file", "outputs/runs/<run>/checkpoints/best.ckpt")
    batch_size: PositiveInt | None = spec("a whole number of images, 1 or more", 1024, None)
    top_k: PositiveInt = spec("a whole number, 1 or more", 3, 3)
    tta: Literal[TTA_MODES] = spec(one_of(TTA_MODES), "flip", "none")
    seed: int = spec("a whole number, 0 or more", 42, 42, ge=0)


class PredictConfig(Open):
    ckpt_path: str = spec("the path of a .ckpt file, or of an .onnx file from export.py", "outputs/runs/<run>/checkpoints/best.ckpt")
    inputs: str = spec("an image file or a folder of images", "photos/")
    top_k: PositiveInt = spec("a whole number, 1 or more", 3, 3)
    output: str | None = spec("null or the path of a JSON file", "predictions.json", None)
    style: Literal["auto", "digit", "clothing", "plain"] = spec("auto, digit, clothing or plain", "auto", "auto")


class ExportConfig(Open):
    ckpt_path: str = spec("the path of a .ckpt file", "outputs/runs/<run>/checkpoints/best.ckpt")
    format: Literal["onnx", "torchscript", "safetensors"] = spec("onnx, torchscript or safetensors", "onnx", "onnx")
    output: str | None = spec("null or the path of the file to write", "model.onnx", None)


# ---------------------------------------------------------------------------------------------- validation


class ConfigValueError(ValueError):
    """A cross-field rule broken inside a model validator, naming its own key."""

    def __init__(self, key: str, value: Any, allowed: str, example: Any):
        super().__init__(allowed)
        self.key, self.value, self.allowed, self.example = key, value, allowed, example


def show(value: Any) -> str:
    """A value written as it would be typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _field_spec(model: type[BaseModel], path: Sequence[Any]) -> tuple[list[str], str | None, Any]:
    """The keys of ``path`` that name fields (pydantic adds union branches and list indexes), with the
    description and example of the deepest field."""
    keys, allowed, example = [], None, None
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None) if isinstance(current, type) else None
        if not fields:
            break
        name = next((n for n, f in fields.items() if part in (n, f.alias)), None)
        if name is None:
            break
        field = fields[name]
        keys.append(field.alias or name)
        allowed = field.description
        example = (field.json_schema_extra or {}).get("example") if isinstance(field.json_schema_extra, dict) else None
        annotation = field.annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return keys, allowed, example


def _lookup(values: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        values = values.get(key) if isinstance(values, Mapping) else None
    return values


def check(model: type[BaseModel], values: Mapping[str, Any], prefix: str) -> BaseModel:
    """Validate ``values`` (the config section at ``prefix``) or raise one ConfigError line."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as error:
        problem = error.errors()[0]
        quoted = _quoted_value(model, values, prefix, problem)
        raise ConfigError(quoted or _message(model, values, prefix, problem)) from None


def _typed(text: str) -> tuple[bool, Any]:
    """What a quoted command-line value would be without its quotes: a number, true, false or null."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return True, lowered == "true"
    if lowered == "null":
        return True, None
    for kind in (int, float):
        try:
            return True, kind(text)
        except ValueError:
            continue
    return False, None


def _quoted_value(model: type[BaseModel], values: Mapping[str, Any], prefix: str, problem: dict) -> str | None:
    """A number (or true/false/null) written in quotes is text, and the schema's "a positive number" would read as
    nonsense beside optimizer.lr='0.1': say it is text, and whether the same value unquoted is allowed."""
    keys, allowed, example = _field_spec(model, problem["loc"])
    value = _lookup(values, keys)
    if not keys or not isinstance(value, str) or problem["type"] == "extra_forbidden":
        return None
    readable, typed = _typed(value)
    if not readable:
        return None
    name = ".".join([prefix, *keys] if prefix else keys)
    changed = _replaced(values, keys, typed)
    try:
        model.model_validate(changed)
        still_wrong = False
    except ValidationError as error:
        still_wrong = any(_field_spec(model, p["loc"])[0] == keys for p in error.errors())
    if not still_wrong:
        return f"{name}='{value}': '{value}' is text: write {name}={show(typed)} without quotes ({allowed or 'a value'})"
    return f"{name}='{value}': '{value}' is text, and {show(typed)} unquoted is not allowed either: {allowed}, e.g. {name}={show(example)}"


def _replaced(values: Mapping[str, Any], keys: Sequence[str], new: Any) -> dict[str, Any]:
    copied = dict(values)
    if len(keys) == 1:
        copied[keys[0]] = new
    else:
        copied[keys[0]] = _replaced(copied.get(keys[0]) or {}, keys[1:], new)
    return copied


def _message(model: type[BaseModel], values: Mapping[str, Any], prefix: str, problem: dict) -> str:
    cause = (problem.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigValueError):  # a cross-field rule: it names its key itself
        key = f"{prefix}.{cause.key}" if prefix else cause.key
        return f"{key}={show(cause.value)}: {cause.allowed}, e.g. {key}={show(cause.example)}"
    keys, allowed, example = _field_spec(model, problem["loc"])
    name = ".".join([prefix, *keys] if prefix else keys)
    if problem["type"] == "extra_forbidden":
        unknown = str(problem["loc"][-1])
        container = _field_spec(model, problem["loc"][:-1])[0]
        section = model
        for key in container:
            section = next(f.annotation for n, f in section.model_fields.items() if key in (n, f.alias))
        known = [f.alias or n for n, f in section.model_fields.items() if not (f.alias or n).startswith("_")]
        full = ".".join([p for p in (prefix, *container) if p] + [unknown])
        close = difflib.get_close_matches(unknown, known, n=1)
        hint = f"did you mean {full.rsplit('.', 1)[0] + '.' if '.' in full else ''}{close[0]}?" if close else \
            f"the keys here are {', '.join(known)}"
        return f"{full}={show(_lookup(values, [*container, unknown]))}: no such key; {hint}"
    if problem["type"] == "missing":
        return f"{name} is required: set it, e.g. {name}={show(example)}"
    value = _lookup(values, keys)
    detail = ""
    if isinstance(cause, ValueError) and str(cause).strip() and allowed and str(cause) not in allowed:
        detail = f" ({cause})"
    if problem["type"] == "finite_number":
        detail = " (a finite number: not inf or nan)"
    return f"{name}={show(value)}: {allowed or problem['msg']}{detail}, e.g. {name}={show(example)}"


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain values; a missing required value (``???``) is named with its fix."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        key = error.full_key
        example = {"data.root": "/path/to/images", "ckpt_path": "outputs/runs/<run>/checkpoints/best.ckpt",
                   "inputs": "photo.png"}.get(key, "VALUE")
        raise ConfigError(f"{key}=??? is required: give it on the command line, e.g. {key}={example}") from None
    except InterpolationResolutionError as error:
        raise ConfigError(_interpolation_message(cfg, error)) from None


def _interpolation_message(cfg: DictConfig, error: InterpolationResolutionError) -> str:
    """OmegaConf's message has three lines (the reason, full_key, object_type) and the reason in a wrapper
    ("KeyError raised while resolving interpolation: ..."): one line, naming the key and the text typed."""
    key = error.full_key
    parent, _, leaf = key.rpartition(".")
    try:  # the text as typed, unresolved (resolving it is what failed)
        node = (OmegaConf.select(cfg, parent) if parent else cfg)._get_node(leaf)
        typed = node._value() if node is not None else None
    except Exception:  # a key OmegaConf cannot walk to without resolving: name it without its text
        typed = None
    reason = str(error.msg).strip().splitlines()[0] if str(error.msg).strip() else type(error).__name__
    reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", reason).strip().strip('"')
    variable = re.search(r"Environment variable '([^']+)' not found", reason)
    shown = f"{key}={typed}" if typed is not None else key
    if variable:
        name = variable.group(1)
        return (f"{shown}: the environment variable {name} is not set: set it (export {name}=...), give a default "
                f"(${{oc.env:{name},VALUE}}) or give the value itself, e.g. {key}=VALUE")
    return f"{shown}: {reason}: correct the ${{...}} interpolation, or give the value itself, e.g. {key}=VALUE"


def _by_target(section: Mapping[str, Any], known: Mapping[str, type[BaseModel]], fallback: type[BaseModel]):
    return known.get(section.get("_target_"), fallback)


def validate_train(cfg: DictConfig) -> dict[str, Any]:
    """Check every tinyvision key of a composed train config; returns the resolved container."""
    values = to_container(cfg)
    check(TopLevel, {k: values[k] for k in ("seed", "resume", "paths", "tta", "slurm") if k in values}, "")
    check(Loss, values.get("loss") or {}, "loss")
    weights = (values.get("loss") or {}).get("class_weights")
    if isinstance(weights, list) and len(weights) != values["data"].get("num_classes"):
        count = values["data"].get("num_classes")
        raise ConfigError(f"loss.class_weights={show(weights)}: one weight per class ({count} for data.num_classes={count}), "
                          f"e.g. loss.class_weights=auto")
    check(_by_target(values["model"], MODELS, Model), values["model"], "model")
    check(Data, values["data"], "data")
    check(_by_target(values["optimizer"], OPTIMIZERS, Optimizer), values["optimizer"], "optimizer")
    if values.get("scheduler"):
        fallback = Scheduler if values["scheduler"].get("_target_") else WarmupOnly
        check(_by_target(values["scheduler"], SCHEDULERS, fallback), values["scheduler"], "scheduler")
    check(Trainer, values["trainer"], "trainer")
    for name, section in (values.get("callbacks") or {}).items():
        if section is None:
            continue
        if name in CALLBACKS:
            check(CALLBACKS[name], section, f"callbacks.{name}")
        elif section.get("_target_") in CALLBACK_TARGETS:
            check(CALLBACK_TARGETS[section["_target_"]], section, f"callbacks.{name}")
            _monitor_is_logged_then(name, section, values)
    for name, section in (values.get("logger") or {}).items():
        if section is not None and section.get("_target_") in LOGGERS:
            check(LOGGERS[section["_target_"]], section, f"logger.{name}")
    if values.get("hparams_search") is not None:
        check(Search, values["hparams_search"], "hparams_search")
    # Last, once every value is of its kind: what the file system and the network say (nothing is written).
    boundaries.check_data(values["data"])
    boundaries.check_loggers(values.get("logger") or {})
    return values


def _monitor_is_logged_then(name: str, section: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """A logged metric that is not logged yet when the callback reads it stops the run after its first validation."""
    metric, key = section.get("monitor"), f"callbacks.{name}.monitor"
    if metric is None:
        return
    if metric.startswith("test/") and not values["data"].get("test_every_epoch"):
        raise ConfigError(f"{key}={metric}: test metrics are logged during training only with data.test_every_epoch=true; "
                          f"add it, or monitor a validation metric, e.g. {key}=val/acc")
    interval = values["trainer"].get("val_check_interval")
    if metric.startswith("train/") and interval not in (None, 1.0):
        raise ConfigError(f"{key}={metric}: train metrics are logged at the end of each epoch, after the validation that "
                          f"trainer.val_check_interval={show(interval)} runs within it; monitor a validation metric, "
                          f"e.g. {key}=val/acc")


class LrFind(Section):
    min_lr: Annotated[float, Field(gt=0)] | Annotated[int, Field(gt=0)] = spec("a positive number below lr_find.max_lr", 1e-6)
    max_lr: Annotated[float, Field(gt=0)] | Annotated[int, Field(gt=0)] = spec("a positive number above lr_find.min_lr", 1)
    num_training: Annotated[int, Field(ge=20)] = spec("a whole number of steps, 20 or more", 100)

    @model_validator(mode="after")
    def _range(self):
        if self.min_lr >= self.max_lr:
            raise ConfigValueError("min_lr", self.min_lr, f"below lr_find.max_lr={self.max_lr:g}", 1e-6)
        return self


def validate_lr_find(cfg: DictConfig) -> dict[str, Any]:
    """The train config's keys, and the learning-rate finder's own."""
    values = validate_train(cfg)
    check(LrFind, values.get("lr_find") or {}, "lr_find")
    return values


def validate_eval(cfg: DictConfig) -> dict[str, Any]:
    values = to_container(cfg)
    check(EvalConfig, {k: v for k, v in values.items() if k not in ("data", "paths")}, "")
    if values.get("data"):
        check(Data, values["data"], "data")
        boundaries.check_data(values["data"])
    return values


def validate_predict(cfg: DictConfig) -> dict[str, Any]:
    values = to_container(cfg)
    check(PredictConfig, {k: v for k, v in values.items() if k != "paths"}, "")
    return values


def validate_export(cfg: DictConfig) -> dict[str, Any]:
    values = to_container(cfg)
    check(ExportConfig, {k: v for k, v in values.items() if k != "paths"}, "")
    return values
