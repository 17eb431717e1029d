"""Pictures of a run: input grids, confusion matrices and misclassified images, for TensorBoard and files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from pydantic import Field
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix
from torchvision.utils import make_grid

from tinyvision.schema import Open, spec


def as_picture(images: Tensor) -> Tensor:
    """Stored uint8 images (the model's input before it normalizes them) as floats in [0, 1]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float().clamp(0, 1)


def confusion_figure(matrix: Tensor, class_names: Sequence[str], title: str = "confusion matrix"):
    """A matplotlib figure of a confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = matrix.cpu()
    size = max(4.0, 0.55 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = matrix.max().item() / 2
    for row in ticks:
        for col in ticks:
            value = int(matrix[row, col])
            axes.text(col, row, str(value), ha="center", va="center", fontsize=8,
                      color="white" if value > threshold else "black")
    figure.tight_layout()
    return figure


def labelled_grid_figure(images: Tensor, titles: Sequence[str], columns: int = 8):
    """A matplotlib figure of [0, 1] images, each with a title such as 'pred 3 / true 5'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images.cpu(), titles):
        axis.imshow(image.permute(1, 2, 0).squeeze(-1), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
        axis.set_title(title, fontsize=7)
    figure.tight_layout()
    return figure


class TensorBoardPictures(L.Callback):
    """Pictures in TensorBoard, each switchable: a grid of training inputs once per run (as the model
    sees them after augmentation, as stored), and every validation epoch the confusion matrix, a grid
    of misclassified validation images labelled predicted/true, and per-class accuracy scalars."""

    class Settings(Open):  # callbacks.pictures; defaults: __init__'s
        input_grid: bool = spec("true or false", True)
        confusion_matrix: bool = spec("true or false", True)
        misclassified: Annotated[int, Field(ge=0)] | bool = spec("a number of images, 0 or more", 16)
        per_class_accuracy: bool = spec("true or false", True)

    def __init__(self, input_grid: bool = True, confusion_matrix: bool = True, misclassified: int = 16,
                 per_class_accuracy: bool = True):
        self.input_grid, self.confusion_matrix = input_grid, confusion_matrix
        self.misclassified, self.per_class_accuracy = misclassified, per_class_accuracy
        self._grid_done = False
        self._reset()

    def _reset(self) -> None:
        self._predictions: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._wrong_images: list[Tensor] = []
        self._wrong_titles: list[str] = []

    @staticmethod
    def _writer(trainer):
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._grid_done or not self.input_grid or not trainer.is_global_zero:
            return
        self._grid_done = True
        writer = self._writer(trainer)
        if writer is not None:
            images = as_picture(batch[0][:64])
            writer.add_image("train/inputs", make_grid(images, nrow=8), trainer.global_step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != 0 or trainer.sanity_checking or outputs is None:
            return
        images, labels = batch
        predictions = outputs.argmax(dim=1)
        self._predictions.append(predictions.cpu())
        self._labels.append(labels.cpu())
        room = self.misclassified - len(self._wrong_images)
        if room > 0:
            wrong = (predictions != labels).nonzero().flatten()[:room]
            names = pl_module.class_names
            self._wrong_images += list(as_picture(images[wrong]).cpu())
            self._wrong_titles += [f"pred {names[p]}\ntrue {names[t]}" for p, t in zip(predictions[wrong].tolist(), labels[wrong].tolist())]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._labels:
            self._reset()
            return
        predictions, labels = torch.cat(self._predictions), torch.cat(self._labels)
        matrix = multiclass_confusion_matrix(predictions, labels, num_classes=len(pl_module.class_names))
        writer, step = self._writer(trainer), trainer.global_step
        if writer is not None and trainer.is_global_zero:
            names = [str(name) for name in pl_module.class_names]
            if self.per_class_accuracy:
                accuracy = matrix.diag() / matrix.sum(dim=1).clamp(min=1)
                for name, value in zip(names, accuracy.tolist()):
                    writer.add_scalar(f"val/acc_class/{name}", value, step)
            if self.confusion_matrix:
                writer.add_figure("val/confusion_matrix", confusion_figure(matrix, names, f"epoch {trainer.current_epoch + 1}"), step)
            if self.misclassified and self._wrong_images:
                figure = labelled_grid_figure(torch.stack(self._wrong_images), self._wrong_titles)
                writer.add_figure("val/misclassified", figure, step)
        self._reset()
