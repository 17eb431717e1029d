"""Pictures of a run: input grids, confusion matrices and misclassified images, for TensorBoard and files."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


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


