"""The final test's per-class report, its figures as test/* metrics, and PR curves in TensorBoard."""

from __future__ import annotations

import lightning as L

from tinyvision.loggers import tensorboard_writer
from tinyvision.schema import PositiveInt, Target, spec


def gather_uneven(pl_module, rows):
    """Every rank's ``rows`` concatenated in rank order, when ranks hold different numbers of rows (the evaluation
    sampler splits N images over the ranks without repeating any): all_gather needs equal shapes, so each rank pads
    its rows to the longest share and the padding is dropped after the gather."""
    import torch

    counts = pl_module.all_gather(torch.tensor(len(rows), device=rows.device)).flatten().tolist()
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[: len(rows)] = rows
    gathered = pl_module.all_gather(padded)  # world_size × longest × ...
    return torch.cat([gathered[rank, :count] for rank, count in enumerate(counts)])


class TestReport(L.Callback):
    """After a test: the per-class report (tinyvision.report) in ``self.report``, its single figures logged
    as test/* metrics (so the test results, metrics.json and every logger hold them), and one precision-recall
    curve per class in TensorBoard's PR-curves tab. Validation is left alone: this runs once, on the test."""

    class Settings(Target):  # callbacks.test_report; defaults: __init__'s
        top_k: PositiveInt = spec("a whole number, 1 or more", 3)
        pr_curves: bool = spec("true or false", True)

    def __init__(self, top_k: int = 3, pr_curves: bool = True):
        self.top_k, self.pr_curves = top_k, pr_curves
        self.report: dict | None = None
        self.confusion_matrix = None  # true × predicted counts of the last test, on the host
        self._probabilities: list = []
        self._labels: list = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._probabilities, self._labels, self.report = [], [], None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if outputs is not None:  # kept on the device until the end: no host copy per batch
            self._probabilities.append(outputs.float().softmax(dim=1))
            self._labels.append(batch[1])

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        import torch
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        from tinyvision.report import classification_report, scalars

        if not self._labels:
            return
        probabilities, labels = torch.cat(self._probabilities), torch.cat(self._labels)
        if trainer.world_size > 1:  # every rank's share, each image once
            probabilities, labels = gather_uneven(pl_module, probabilities), gather_uneven(pl_module, labels)
        names = [str(name) for name in pl_module.class_names]
        self.report = classification_report(probabilities, labels, names, self.top_k)
        self.confusion_matrix = multiclass_confusion_matrix(probabilities.argmax(1), labels, num_classes=len(names)).cpu()
        pl_module.log_dict(scalars(self.report))
        self._probabilities, self._labels = [], []
        writer = tensorboard_writer(trainer)
        if self.pr_curves and writer is not None and trainer.is_global_zero:
            probabilities, labels = probabilities.cpu(), labels.cpu()
            for index, name in enumerate(names):
                writer.add_pr_curve(f"test/pr_curve/{name}", labels == index, probabilities[:, index], trainer.global_step)
