"""One LightningModule that trains any architecture as an image classifier."""

from __future__ import annotations

from typing import Any

import hydra.utils
import lightning as L
import torch
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from tinyvision.models import build_model


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
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        num_classes = data["num_classes"]
        self.net = build_model(model, data["channels"], num_classes, data["image_size"])
        self.class_names: list[str] = list(data.get("class_names") or range(num_classes))
        self.run_config: dict[str, Any] | None = None  # the whole composed config, saved with each checkpoint
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, stage: str) -> None:
        images, labels = batch
        logits = self(images)
        loss, accuracy = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss.update(F.cross_entropy(logits, labels), weight=len(labels))
        accuracy.update(logits, labels)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_acc_best(self.val_acc.compute())
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(images).softmax(dim=1)

    def configure_optimizers(self):
        optimizer = hydra.utils.instantiate(self.hparams.optimizer)(params=self.parameters())
        settings = dict(self.hparams.scheduler or {})
        if not settings.get("_target_"):
            return optimizer
        interval = settings.pop("interval", "epoch")
        # "auto" values are filled in from the run: the length of training and the optimizer's lr.
        auto = {
            "total_steps": self.trainer.estimated_stepping_batches,
            "T_max": self.trainer.max_epochs if interval == "epoch" else self.trainer.estimated_stepping_batches,
            "max_lr": optimizer.param_groups[0]["lr"],
        }
        settings = {key: auto[key] if value == "auto" else value for key, value in settings.items()}
        scheduler = hydra.utils.instantiate(settings)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def on_fit_start(self) -> None:
        self._take_class_names()

    def on_test_start(self) -> None:
        self._take_class_names()

    def _take_class_names(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "class_names", None):
            self.class_names = list(datamodule.class_names)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["class_names"] = [str(name) for name in self.class_names]
        if self.run_config is not None:
            checkpoint["config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.class_names = list(checkpoint.get("class_names", self.class_names))
        self.run_config = checkpoint.get("config")
