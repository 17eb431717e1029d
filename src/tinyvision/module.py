"""One LightningModule that trains any architecture as an image classifier."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import lightning as L
import torch
from pydantic import Field
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from tinyvision.errors import ConfigError
from tinyvision.models import ModelSettings, build_model, head_of
from tinyvision.optim import build_optimizer, build_schedulers
from tinyvision.preprocessing import Normalize, as_hw
from tinyvision.schema import Section, Zero, spec
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

    All arguments are plain dicts from the composed config, saved in every checkpoint, so a checkpoint
    alone rebuilds the model and its preprocessing (``data``: channels, image_size, mean, std, classes).
    A net ending in ``log_softmax`` trains correctly too: cross-entropy on log-probabilities is their NLL.
    """

    def __init__(
        self,
        model: dict[str, Any],
        data: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        num_classes = data["num_classes"]
        loss = loss or {}
        self.label_smoothing = float(loss.get("label_smoothing") or 0.0)
        self.class_weights_setting = loss.get("class_weights")
        # "auto" weights are counted from the training split at every fit start (a resumed run's split is the
        # same), so the buffer is not saved: checkpoints of runs without weights load as before.
        weights = self.class_weights_setting if isinstance(self.class_weights_setting, list) else [1.0] * num_classes
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.net = build_model(model, data["channels"], num_classes, data["image_size"])
        if not any(True for _ in self.net.parameters()):  # the optimizer's "empty parameter list", 50 lines later
            raise ConfigError(f"model._target_={model.get('_target_')}: the network has no weights to train: give a "
                              "classifier whose constructor takes in_channels and num_classes, e.g. model=convnet")
        pretrained = getattr(self.net, "pretrained_mean_std", None)
        if pretrained is not None:
            # Pretrained weights expect the statistics they were trained with, not the dataset's; the
            # saved data settings say so, so a checkpoint and an export normalize the same way.
            self.hparams.data["mean"], self.hparams.data["std"] = data["mean"], data["std"] = pretrained
        self.normalize = Normalize(data["mean"], data["std"], data["channels"])
        # NHWC convolutions: measured faster on this CPU (BENCHMARKS.md), and the format tensor cores prefer.
        # A model dict without the key (a hand-built one) gets the setting's one default, not a second one here
        self.channels_last = bool(model.get("channels_last", ModelSettings.model_fields["channels_last"].default))
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if model.get("compile", False):
            self.net.compile()  # in place, so checkpoints keep the plain parameter names
        self.class_names: list[str] = list(data.get("class_names") or range(num_classes))
        self.run_config: dict[str, Any] | None = None  # the whole composed config, saved with each checkpoint
        self.test_tta = "none"  # the final test's test-time augmentation (set by the run; not a weight's concern)
        self._epoch_lr: float | None = None
        height, width = as_hw(data["image_size"])
        if not model.get("compile", False):  # a compiled net cannot be traced for the TensorBoard graph
            self.example_input_array = torch.zeros(1, data["channels"], height, width, dtype=torch.uint8)
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
        settings = self.hparams.optimizer
        parameters = self._parameter_groups(settings.get("backbone_lr_scale", 1.0), settings.get("lr"))
        optimizer = build_optimizer(settings, parameters)
        scheduler = self.hparams.scheduler or {}
        if not scheduler.get("warmup_epochs") and not scheduler.get("_target_"):
            return optimizer  # a constant lr: no schedule to count the run's steps for
        return [optimizer], build_schedulers(optimizer, scheduler, self._stepping_batches(), self.trainer.max_epochs)

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

    def _parameter_groups(self, backbone_lr_scale: float, lr: float | None):
        """All trainable parameters; with backbone_lr_scale other than 1, the head at the optimizer's lr and
        the rest (the backbone) at lr × backbone_lr_scale, as two parameter groups."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        if backbone_lr_scale == 1.0 or lr is None:
            return trainable
        head = {id(p) for p in head_of(self.net).parameters()}
        # The head first: param_groups[0] keeps the optimizer's lr, which train/lr records.
        return [{"params": [p for p in trainable if id(p) in head]},
                {"params": [p for p in trainable if id(p) not in head], "lr": lr * backbone_lr_scale}]

    def _weights(self) -> torch.Tensor | None:
        return self.class_weights if self.class_weights_setting is not None else None

    def on_fit_start(self) -> None:
        self._take_class_names()
        if self.class_weights_setting == "auto":
            counts = class_counts(self.trainer.datamodule, self.hparams.data["num_classes"])
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
