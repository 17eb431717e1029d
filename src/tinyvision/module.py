"""One LightningModule that trains any architecture as an image classifier."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import lightning as L
import torch
from pydantic import Field
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from tinyvision.errors import ConfigError
from tinyvision.models import ModelSettings, build_model, head_of, model_settings
from tinyvision.optim import Optimizer, WarmupOnly, optimizer_settings, scheduler_settings
from tinyvision.preprocessing import InputDefinition, Normalize
from tinyvision.schema import Section, Zero, check, show, spec
from tinyvision.tta import probabilities as tta_probabilities

# What ImageClassifier logs with self.log: per epoch, train/* at the end of the training epoch, val/* at the end of
# validation, test/* in validation only with data.test_every_epoch (and in the final test).
LOGGED_METRICS = ("val/acc", "val/loss", "val/acc_best", "train/acc", "train/loss", "train/lr", "test/acc", "test/loss")


class LossSettings(Section):
    """``loss``: the training objective's cross-entropy settings (validation and test report plain cross-entropy)."""

    # the target puts this much mass evenly over all classes
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] | Zero = spec("a number from 0 to below 1", 0.1, 0.0)
    # auto: inverse class frequency of the training split
    class_weights: Literal["auto"] | Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=2)] | None = spec(
        "null, auto or a list of positive weights, one per class", "auto", None)


class ImageClassifier(L.LightningModule):
    """Cross-entropy classification with one accuracy metric per stage.

    Each section comes typed (the run's checked settings) or as the plain dict a checkpoint keeps, which is checked
    here; the hyperparameters saved in every checkpoint are plain dicts, so a checkpoint alone rebuilds the model and
    its preprocessing (``data``: channels, image_size, mean, std, classes) without tinyvision's settings classes.
    A net ending in ``log_softmax`` trains correctly too: cross-entropy on log-probabilities is their NLL.
    """

    def __init__(
        self,
        model: ModelSettings | Mapping[str, Any],
        data: InputDefinition | Mapping[str, Any],
        optimizer: Optimizer | Mapping[str, Any],
        scheduler: WarmupOnly | Mapping[str, Any] | None = None,
        loss: LossSettings | Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.model_settings = model if isinstance(model, ModelSettings) else model_settings(model)
        self.optimizer_settings = optimizer if isinstance(optimizer, Optimizer) else optimizer_settings(optimizer)
        self.scheduler_settings = scheduler if isinstance(scheduler, WarmupOnly) else scheduler_settings(scheduler)
        self.loss_settings = loss if isinstance(loss, LossSettings) else check(LossSettings, loss or {}, "loss")
        try:
            self.input = data if isinstance(data, InputDefinition) else InputDefinition.from_config(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # a hand-edited or foreign checkpoint's
            raise ConfigError(f"data={show(data)}: not an input definition (channels, image_size, num_classes, mean and "
                              f"std; {type(error).__name__}: {error})") from None
        self.save_hyperparameters({
            "model": self.model_settings.as_config(), "data": self.input.as_config(),
            "optimizer": self.optimizer_settings.as_config(),
            "scheduler": self.scheduler_settings.as_config() if self.scheduler_settings is not None else None,
            "loss": self.loss_settings.as_config(),
        }, logger=False)
        num_classes = self.input.num_classes
        self.label_smoothing = self.loss_settings.label_smoothing
        self.class_weights_setting = self.loss_settings.class_weights
        # "auto" weights are counted from the training split at every fit start (a resumed run's split is the
        # same), so the buffer is not saved: checkpoints of runs without weights load as before.
        weights = self.class_weights_setting if isinstance(self.class_weights_setting, list) else [1.0] * num_classes
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.net = build_model(self.model_settings, self.input.channels, num_classes, self.input.image_size)
        if not any(True for _ in self.net.parameters()):  # the optimizer's "empty parameter list", 50 lines later
            raise ConfigError(f"model._target_={self.model_settings.target}: the network has no weights to train: give a "
                              "classifier whose constructor takes in_channels and num_classes, e.g. model=convnet")
        pretrained = getattr(self.net, "pretrained_mean_std", None)
        if pretrained is not None:
            # Pretrained weights expect the statistics they were trained with, not the dataset's; the
            # saved data settings say so, so a checkpoint and an export normalize the same way.
            self.input = dataclasses.replace(self.input, mean=tuple(pretrained[0]), std=tuple(pretrained[1]))
            self.hparams.data = self.input.as_config()
        self.normalize = Normalize(self.input.mean, self.input.std, self.input.channels)
        # NHWC convolutions: measured faster on this CPU (BENCHMARKS.md), and the format tensor cores prefer.
        self.channels_last = self.model_settings.channels_last
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.model_settings.compile:
            self.net.compile()  # in place, so checkpoints keep the plain parameter names
        self.class_names: list[str] = list(range(num_classes))  # the data module's names, when it has them (fit, test)
        self.run_config: dict[str, Any] | None = None  # the whole composed config, saved with each checkpoint
        self.test_tta = "none"  # the final test's test-time augmentation (set by the run; not a weight's concern)
        self._epoch_lr: float | None = None
        height, width = self.input.height_width
        if not self.model_settings.compile:  # a compiled net cannot be traced for the TensorBoard graph
            self.example_input_array = torch.zeros(1, self.input.channels, height, width, dtype=torch.uint8)
        # No argument checks in the per-step updates: each one reads a value back from the device (a host
        # sync per step on a GPU). Labels are checked when a dataset is loaded; a NaN loss is the
        # StopOnNonFiniteLoss callback's to catch.
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro", validate_args=False))
        self.val_acc_best = MaxMetric()
        # Checkpoints keep the running training metrics and the best so far, for a run resumed mid-epoch.
        for metric in (self.train_loss, self.train_acc, self.val_acc_best):
            metric.persistent(True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores for images as stored (uint8, 0-255), normalized here with the training data's mean
        and std; a float tensor is taken as already normalized."""
        if images.dtype == torch.uint8:
            images = self.normalize(images)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    # Metrics accumulate every step and are logged once an epoch: each self.log call costs Lightning
    # about a millisecond, which per step would be a tenth of a small model's epoch on a CPU.

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        if stage == "test" and self.test_tta != "none":
            # Test-time augmentation: the log of the views' mean probabilities stands in for the logits
            # (cross-entropy on log-probabilities is their negative log-likelihood).
            logits = tta_probabilities(self, images, self.test_tta).clamp(min=1e-12).log()
        else:
            logits = self(images)
        if stage == "train":  # the training objective; validation and test report plain cross-entropy
            loss = F.cross_entropy(logits, labels, weight=self._weights(), label_smoothing=self.label_smoothing)
        else:
            loss = F.cross_entropy(logits, labels)
        # The batch's mean loss once per image, so the epoch's figure is the mean over images (a short last batch
        # counts for its size). Not update(loss, weight=n): with nan_strategy="disable" torchmetrics 1.9 drops the
        # weight (torchmetrics#3434), and every other strategy reads a NaN check back from the device each step.
        getattr(self, f"{stage}_loss").update(loss.detach().expand(len(labels)))
        # MixUp/CutMix give soft labels (rows summing to 1): accuracy is then against the larger share's class.
        getattr(self, f"{stage}_acc").update(logits.detach(), labels.argmax(1) if labels.dim() == 2 else labels)
        return loss, logits

    def _log_epoch(self, stage: str) -> torch.Tensor | None:
        loss, accuracy = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        if accuracy.update_count == 0:
            return None
        value = accuracy.compute()
        self.log(f"{stage}/loss", loss.compute(), prog_bar=stage != "train", sync_dist=True)
        self.log(f"{stage}/acc", value, prog_bar=True, sync_dist=True)
        loss.reset()
        accuracy.reset()
        return value

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # train/lr is the rate an epoch starts with, saved in checkpoints for a resume. Not Lightning's
        # LearningRateMonitor: it writes to the loggers only, and metrics.json's history reads callback metrics.
        if batch_idx == 0:
            self._epoch_lr = self.optimizers().param_groups[0]["lr"]
        # No per-step self.log: the progress bar's live loss comes from StopOnNonFiniteLoss's periodic read.
        return self._step(batch, "train")[0]

    def on_train_epoch_end(self) -> None:
        if self._epoch_lr is not None:
            self.log("train/lr", self._epoch_lr, sync_dist=True)
        self._log_epoch("train")

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        # A second validation loader is the test split, evaluated every epoch for accuracy curves.
        return self._step(batch, "val" if dataloader_idx == 0 else "test")[1].detach()  # logits, for callbacks

    def on_validation_epoch_end(self) -> None:
        accuracy = self._log_epoch("val")
        self._log_epoch("test")
        if accuracy is not None and not self.trainer.sanity_checking:
            self.val_acc_best(accuracy)
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")[1].detach()  # logits, for the TestReport callback

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        optimizer = self.optimizer_settings.build(self._parameter_groups())
        schedule = self.scheduler_settings
        if schedule is None or schedule.constant:
            return optimizer  # no schedule to count the run's steps for
        return [optimizer], schedule.build(optimizer, self._stepping_batches(), self.trainer.max_epochs)

    def _stepping_batches(self) -> int:
        """The optimizer steps of the whole run, as Lightning's ``estimated_stepping_batches`` counts them.

        Not that property itself: it makes Lightning build the training loader before a resumed run's loop
        state is loaded, and that loader then never receives it (the run would restart its epoch's batches)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "train_batches_per_epoch"):
            return int(self.trainer.estimated_stepping_batches)
        batches = datamodule.train_batches_per_epoch()
        limit = self.trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        return math.ceil(batches / self.trainer.accumulate_grad_batches) * self.trainer.max_epochs

    def _parameter_groups(self):
        """All trainable parameters; with optimizer.backbone_lr_scale other than 1, the head at the optimizer's lr and
        the rest (the backbone) at lr × backbone_lr_scale, as two parameter groups."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        scale = self.optimizer_settings.backbone_lr_scale
        if scale == 1:
            return trainable
        head = {id(p) for p in head_of(self.net).parameters()}
        # The head first: param_groups[0] keeps the optimizer's lr, which train/lr records.
        return [{"params": [p for p in trainable if id(p) in head]},
                {"params": [p for p in trainable if id(p) not in head], "lr": self.optimizer_settings.lr * scale}]

    def _weights(self) -> torch.Tensor | None:
        return self.class_weights if self.class_weights_setting is not None else None

    def on_fit_start(self) -> None:
        self._take_class_names()
        if self.class_weights_setting == "auto":
            counts = class_counts(self.trainer.datamodule, self.input.num_classes)
            # sklearn's "balanced": N / (C × n_c); a class absent from the split gets no weight at all
            weights = counts.sum() / (len(counts) * counts.clamp(min=1))
            self.class_weights.copy_(torch.where(counts > 0, weights, torch.zeros_like(weights)))

    def on_test_start(self) -> None:
        self._take_class_names()

    def _take_class_names(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "class_names", None):
            self.class_names = list(datamodule.class_names)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["class_names"] = [str(name) for name in self.class_names]
        checkpoint["epoch_lr"] = self._epoch_lr
        if self.run_config is not None:
            checkpoint["config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.class_names = list(checkpoint.get("class_names", self.class_names))
        self._epoch_lr = checkpoint.get("epoch_lr")
        self.run_config = checkpoint.get("config")


def class_counts(datamodule, num_classes: int) -> torch.Tensor:
    """Images per class in a data module's training split (tensor splits, or a per-image dataset)."""
    splits = getattr(datamodule, "splits", None)
    if splits:
        labels = splits["train"][1].cpu()
    else:
        subset = datamodule.streamed.datasets["train"]
        targets = getattr(subset.dataset, "targets", None)
        labels = torch.tensor([targets[i] for i in subset.indices] if targets is not None else [y for _, y in subset])
    return torch.bincount(labels, minlength=num_classes).float()
