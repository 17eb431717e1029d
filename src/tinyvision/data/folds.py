"""k-fold cross-validation: stratified, seeded folds of a training split (``data.folds``, ``data.fold``)."""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_folds(labels: Tensor, folds: int, generator: torch.Generator) -> Tensor:
    """The fold (0 to ``folds`` - 1) of each sample: each class's samples are shuffled with ``generator`` and dealt
    to the folds in turn, the turn carrying on from one class to the next, so every fold holds each class in
    proportion (within one image) and the folds' sizes differ by at most one. The same labels and generator state
    give the same folds, whichever fold a run then holds out."""
    assignment = torch.empty(len(labels), dtype=torch.long)
    dealt = 0
    for label in torch.unique(labels).tolist():  # sorted: the deal does not depend on the labels' order
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        assignment[members] = (torch.arange(len(members)) + dealt) % folds
        dealt += len(members)
    return assignment
