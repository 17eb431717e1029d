"""The per-class report of a test: precision, recall, F1 and support per class, macro and weighted
averages, top-k accuracy and the expected calibration error, all from torchmetrics."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from tinyvision.files import replacing

PER_CLASS_FILE = "per_class.csv"
CALIBRATION_BINS = 15  # the usual choice for ECE (Guo et al., 2017)


def classification_report(probabilities: Tensor, labels: Tensor, class_names: Sequence[str], top_k: int = 3) -> dict[str, Any]:
    """The report of class probabilities (N × C, rows summing to 1) against true labels (N).

    ``top_k`` is capped at the number of classes. A class that never occurs and is never predicted has
    precision, recall and F1 of 0, and counts in the macro average (torchmetrics' ``zero_division=0``)."""
    num_classes = len(class_names)
    k = min(top_k, num_classes)
    probabilities, labels = probabilities.float().cpu(), labels.long().cpu()
    predicted = probabilities.argmax(1)  # once: given probabilities, each of the nine calls below would take it again

    def per(metric, average):
        return metric(predicted, labels, num_classes=num_classes, average=average, validate_args=False)

    precision, recall, f1 = (per(m, None) for m in (multiclass_precision, multiclass_recall, multiclass_f1_score))
    support = torch.bincount(labels, minlength=num_classes)
    report = {
        "images": len(labels),
        "accuracy": float(multiclass_accuracy(probabilities, labels, num_classes=num_classes, average="micro")),
        f"top{k}_accuracy": float(multiclass_accuracy(probabilities, labels, num_classes=num_classes, average="micro", top_k=k)),
        "ece": float(multiclass_calibration_error(probabilities, labels, num_classes=num_classes, n_bins=CALIBRATION_BINS)),
        "per_class": {
            str(name): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        },
    }
    for average in ("macro", "weighted"):
        report[average] = {
            "precision": float(per(multiclass_precision, average)),
            "recall": float(per(multiclass_recall, average)),
            "f1": float(per(multiclass_f1_score, average)),
        }
    return report


def scalars(report: dict[str, Any], prefix: str = "test") -> dict[str, float]:
    """The report's single figures, as logger metrics: test/f1_macro, test/top3_acc, test/ece, ..."""
    figures = {f"{prefix}/{key.replace('_accuracy', '_acc')}": report[key] for key in report if key.endswith("_accuracy")}
    figures[f"{prefix}/ece"] = report["ece"]
    for average in ("macro", "weighted"):
        figures.update({f"{prefix}/{name}_{average}": value for name, value in report[average].items()})
    return figures


def write_per_class_csv(path: Path, report: dict[str, Any]) -> None:
    """per_class.csv: one row per class, then the macro and weighted averages (support: all images)."""
    with replacing(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name, row in report["per_class"].items():
            writer.writerow([name, f"{row['precision']:.6f}", f"{row['recall']:.6f}", f"{row['f1']:.6f}", row["support"]])
        for average in ("macro", "weighted"):
            row = report[average]
            writer.writerow([f"{average} avg", f"{row['precision']:.6f}", f"{row['recall']:.6f}", f"{row['f1']:.6f}", report["images"]])
