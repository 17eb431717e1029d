"""Pictures of a run: input grids, confusion matrices and misclassified images, for TensorBoard and files."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def as_picture(images: Tensor) -> Tensor:
    """Stored uint8 images (the model's input before it normalizes them) as floats in [0, 1]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float().clamp(0, 1)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_matrix(axes, matrix: Tensor, class_names: Sequence[str], cells: Sequence[Sequence[str]], title: str) -> None:
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
            axes.text(col, row, cells[row][col], ha="center", va="center", fontsize=8,
                      color="white" if matrix[row, col] > threshold else "black")


def confusion_figure(matrix: Tensor, class_names: Sequence[str], title: str = "confusion matrix", normalized: bool = False):
    """A matplotlib figure of a confusion matrix (rows: true class, columns: predicted), counts in the cells; with
    ``normalized`` a second panel beside it holds each row's shares (the diagonal is each class's recall)."""
    plt = _pyplot()
    matrix = matrix.cpu()
    size = max(4.0, 0.55 * len(class_names) + 2)
    panels = 2 if normalized else 1
    figure, axes = plt.subplots(1, panels, figsize=(size * panels, size), squeeze=False)
    _draw_matrix(axes[0, 0], matrix, class_names, [[str(int(v)) for v in row] for row in matrix.tolist()], title)
    if normalized:
        shares = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp(min=1)  # a class without test images: a zero row
        _draw_matrix(axes[0, 1], shares, class_names, [[f"{v:.2f}" for v in row] for row in shares.tolist()],
                     "normalized by true class (row)")
    figure.tight_layout()
    return figure


def results_figure(history: Sequence[dict], test: dict[str, float | None]):
    """Loss and accuracy per epoch, training and validation, with the final test as a point after the last epoch:
    YOLO's results.png, readable without a server."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row.get("epoch", index + 1) for index, row in enumerate(history)]  # 1 for the first epoch
    for axes, metric in ((loss_axes, "loss"), (acc_axes, "acc")):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [(e, row[f"{split}/{metric}"]) for e, row in zip(epochs, history) if row.get(f"{split}/{metric}") is not None]
            if points:
                axes.plot(*zip(*points), style, markersize=3, label=split)
        if test.get(f"test/{metric}") is not None:
            axes.plot([epochs[-1] if epochs else 1], [test[f"test/{metric}"]], "*", markersize=12,
                      label=f"test (best checkpoint) {test[f'test/{metric}']:.4f}")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title({"loss": "loss", "acc": "accuracy"}[metric])
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    return figure


def labelled_grid_figure(images: Tensor, titles: Sequence[str], columns: int = 8):
    """A matplotlib figure of [0, 1] images, each with a title such as 'pred 3 / true 5'."""
    plt = _pyplot()
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images.cpu(), titles):
        axis.imshow(image.permute(1, 2, 0).squeeze(-1), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
        axis.set_title(title, fontsize=7)
    figure.tight_layout()
    return figure


