"""Pictures of a run: in TensorBoard training inputs, the confusion matrix, misclassified images and per-class accuracy
every epoch; in the run folder the results curves and the test's confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import lightning as L
import torch
from pydantic import Field
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix
from torchvision.utils import make_grid

from tinyvision.files import save_figure
from tinyvision.loggers import tensorboard_writer
from tinyvision.pictures import as_picture, confusion_figure, labelled_grid_figure, results_figure
from tinyvision.schema import Target, spec


class TensorBoardPictures(L.Callback):
    """Pictures in TensorBoard, each switchable: a grid of training inputs once per run (as the model
    sees them after augmentation, as stored), and every validation epoch the confusion matrix, a grid
    of misclassified validation images labelled predicted/true, and per-class accuracy scalars."""

    class Settings(Target):  # callbacks.pictures; defaults: __init__'s
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
        # Kept on the device until the epoch ends: nothing is read back per validation batch (a host sync each).
        self._predictions: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._candidates: list[tuple[Tensor, Tensor, Tensor]] = []  # per batch: its first wrong images, predictions, labels

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._grid_done or not self.input_grid or not trainer.is_global_zero:
            return
        self._grid_done = True
        writer = tensorboard_writer(trainer)
        if writer is not None:
            images = as_picture(batch[0][:64])
            writer.add_image("train/inputs", make_grid(images, nrow=8), trainer.global_step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != 0 or trainer.sanity_checking or outputs is None:
            return
        images, labels = batch
        predictions = outputs.argmax(dim=1)
        self._predictions.append(predictions)
        self._labels.append(labels)
        if self.misclassified:
            # The batch's wrong images first, in batch order (a stable sort on the device), of which the epoch's end
            # keeps the first ``misclassified`` of the whole validation: no count of them is read here.
            first = torch.argsort((predictions == labels).to(torch.uint8), stable=True)[: self.misclassified]
            self._candidates.append((images[first], predictions[first], labels[first]))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._labels:
            self._reset()
            return
        predictions, labels = torch.cat(self._predictions).cpu(), torch.cat(self._labels).cpu()
        matrix = multiclass_confusion_matrix(predictions, labels, num_classes=len(pl_module.class_names))
        writer, step = tensorboard_writer(trainer), trainer.global_step
        if writer is not None and trainer.is_global_zero:
            names = [str(name) for name in pl_module.class_names]
            if self.per_class_accuracy:
                accuracy = matrix.diag() / matrix.sum(dim=1).clamp(min=1)
                for name, value in zip(names, accuracy.tolist()):
                    writer.add_scalar(f"val/acc_class/{name}", value, step)
            if self.confusion_matrix:
                writer.add_figure("val/confusion_matrix", confusion_figure(matrix, names, f"epoch {trainer.current_epoch + 1}"), step)
            wrong = self._misclassified()
            if wrong is not None:
                images, predicted, true = wrong
                titles = [f"pred {names[p]}\ntrue {names[t]}" for p, t in zip(predicted.tolist(), true.tolist())]
                writer.add_figure("val/misclassified", labelled_grid_figure(as_picture(images), titles), step)
        self._reset()

    def _misclassified(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """The validation's first ``misclassified`` wrong images with their predicted and true labels, on the host."""
        if not self.misclassified or not self._candidates:
            return None
        images, predicted, true = (torch.cat(parts).cpu() for parts in zip(*self._candidates))
        wrong = (predicted != true).nonzero().flatten()[: self.misclassified]
        return (images[wrong], predicted[wrong], true[wrong]) if len(wrong) else None


class RunPictures(L.Callback):
    """After the final test, pictures in the run folder that need no server: ``results.png`` (loss and accuracy per
    epoch, training and validation, and the test) and ``confusion_matrix.png`` (the test's counts and their shares of
    each true class). Written once, by rank 0, each whole or not at all."""

    class Settings(Target):  # callbacks.run_pictures; defaults: __init__'s
        dirpath: str = spec("a directory path", "outputs/runs/<run>")
        results: bool = spec("true or false", True)
        confusion_matrix: bool = spec("true or false", True)

    def __init__(self, dirpath: str, results: bool = True, confusion_matrix: bool = True):
        self.dirpath, self.results, self.confusion_matrix = Path(dirpath), results, confusion_matrix
        self.written: list[Path] = []

    def on_test_end(self, trainer, pl_module) -> None:
        from tinyvision.callbacks.lookup import find_callback
        from tinyvision.callbacks.record import RunRecord
        from tinyvision.callbacks.test_report import TestReport

        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        figures = {}
        if self.results:
            record = find_callback(trainer, RunRecord)
            test = {key: float(trainer.callback_metrics[key]) for key in ("test/loss", "test/acc") if key in trainer.callback_metrics}
            figures["results.png"] = results_figure(record.history if record is not None else [], test)
        report = find_callback(trainer, TestReport)
        if self.confusion_matrix and report is not None and report.confusion_matrix is not None:
            accuracy = trainer.callback_metrics.get("test/acc")
            title = f"test accuracy {float(accuracy):.2%}" if accuracy is not None else "test"
            figures["confusion_matrix.png"] = confusion_figure(report.confusion_matrix, [str(n) for n in pl_module.class_names],
                                                               title, normalized=True)
        for name, figure in figures.items():
            save_figure(figure, self.dirpath / name)
            figure.clf()
            self.written.append(self.dirpath / name)
