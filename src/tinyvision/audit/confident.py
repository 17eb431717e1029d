"""Confident learning (Northcutt, Jiang and Chuang, JAIR 2021), the steps cleanlab's find_label_issues takes by default,
written here because cleanlab is AGPL-3.0 (docs/design.md): out-of-fold probabilities in, the images whose given label
is likely wrong out, most likely first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

METHODS = ("prune_by_noise_rate", "confident_learning")  # cleanlab's names for its filter_by options
Method = Literal["prune_by_noise_rate", "confident_learning"]


@dataclass
class LabelIssues:
    rows: np.ndarray  # the flagged images' rows, most likely mislabeled first
    suggested: np.ndarray  # per flagged row: the class the model gives it most probability
    score: np.ndarray  # per flagged row: 1 - the probability of its given label (self-confidence's complement)
    confident_joint: np.ndarray  # K×K counts: given class × the class it confidently belongs to, calibrated


def thresholds(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per class j: the mean probability of j over the images labelled j (its expected self-confidence)."""
    classes = probabilities.shape[1]
    found = np.full(classes, np.inf)  # a class without images can claim none
    for j in range(classes):
        mine = labels == j
        if mine.any():
            found[j] = probabilities[mine, j].mean()
    return found


def confident_labels(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per image: the most probable class among those whose probability reaches their threshold, or -1 for none."""
    above = probabilities >= thresholds(labels, probabilities)[None, :]
    masked = np.where(above, probabilities, -1.0)
    confident = masked.argmax(axis=1)
    confident[~above.any(axis=1)] = -1
    return confident


def confident_joint(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Counts of (given label, confident label), each row calibrated to the number of images given that label."""
    classes = probabilities.shape[1]
    confident = confident_labels(labels, probabilities)
    counted = confident >= 0
    joint = np.zeros((classes, classes))
    np.add.at(joint, (labels[counted], confident[counted]), 1)
    given = np.bincount(labels, minlength=classes).astype(float)
    rows = joint.sum(axis=1, keepdims=True)
    return np.divide(joint, rows, out=np.zeros_like(joint), where=rows > 0) * given[:, None]


def rounded_keeping_row_totals(matrix: np.ndarray) -> np.ndarray:
    """Each row rounded so that its entries sum to its rounded total: the largest fractions round up first."""
    floors = np.floor(matrix)
    for row in range(len(matrix)):
        short = int(round(matrix[row].sum() - floors[row].sum()))
        if short > 0:
            floors[row, np.argsort(-(matrix[row] - floors[row]), kind="stable")[:short]] += 1
    return floors.astype(int)


def find_label_issues(labels: np.ndarray, probabilities: np.ndarray, method: Method = "prune_by_noise_rate") -> LabelIssues:
    """The likely mislabeled images. ``prune_by_noise_rate`` (cleanlab's default): for each pair of given class i and
    other class j, the C[i, j] images given i (C rounded keeping its row totals) with the largest margin p_j - p_i;
    ``confident_learning``: the images whose confident label is not their given one. As cleanlab does, an image whose
    most probable class is its given label is never flagged. Ranked by the probability of the given label, lowest
    first."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    joint = confident_joint(labels, probabilities)
    counts = rounded_keeping_row_totals(joint)
    by_joint = np.zeros(len(labels), dtype=bool)
    confident = confident_labels(labels, probabilities)
    by_joint[(confident >= 0) & (confident != labels)] = True
    by_pruning = np.zeros(len(labels), dtype=bool)
    classes = probabilities.shape[1]
    for i in range(classes):
        given_i = np.flatnonzero(labels == i)
        for j in range(classes):
            count = int(counts[i, j]) if i != j else 0
            if count <= 0 or len(given_i) == 0:
                continue
            margin = probabilities[given_i, j] - probabilities[given_i, i]
            by_pruning[given_i[np.argsort(-margin, kind="stable")[:count]]] = True
    flagged = {"prune_by_noise_rate": by_pruning, "confident_learning": by_joint}[method]
    predicted = probabilities.argmax(axis=1)
    flagged &= predicted != labels
    rows = np.flatnonzero(flagged)
    self_confidence = probabilities[rows, labels[rows]]
    rows = rows[np.argsort(self_confidence, kind="stable")]
    return LabelIssues(rows=rows, suggested=predicted[rows], score=1.0 - probabilities[rows, labels[rows]],
                       confident_joint=joint)
