"""Batches drawn by index from tensors that already hold a whole split."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


def epoch_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from a tuple such as (seed, epoch, rank)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class IndexSampler:
    """The sample order of an epoch as a pure function of (seed, epoch, rank).

    Every rank takes a disjoint share of one permutation. For training the shares are made equal
    (dropping at most ``world_size - 1`` samples an epoch) so that DDP ranks step together.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, even: bool = True):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.even = rank, world_size, even
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each training epoch."""
        self.epoch = epoch

    def indices(self) -> Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        if self.even:
            order = order[: self.size - self.size % self.world_size]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        usable = self.size - self.size % self.world_size if self.even else self.size
        return len(range(self.rank, usable, self.world_size))


class TensorBatches:
    """An iterable of (images, labels) batches, indexed out of in-memory tensors on their device.

    ``generator`` is re-seeded from (seed, epoch, rank) at the start of each pass, for augmentation
    that is repeatable whatever happened before. ``sampler`` is where Lightning finds ``set_epoch``.

    It is resumable (Lightning's ``state_dict``/``load_state_dict`` protocol): a checkpoint records
    the epoch, how many of its batches were trained and the augmentation generator's state, and the
    next pass starts with the batch after them (or with the next epoch), so a resumed run sees exactly
    the batches it would have. ``progress`` returns (batches trained in this pass, whether the pass is
    complete); Lightning fetches one batch ahead, so the count handed out would be one too many.
    """

    batch_sampler = None  # read by Lightning's loader inspection: batches are made here, not by a sampler

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, sampler: IndexSampler,
                 progress: Callable[[], tuple[int, bool]] | None = None):
        self.images, self.labels, self.batch_size, self.sampler = images, labels, batch_size, sampler
        self.generator = torch.Generator(device=images.device)
        self.progress = progress
        self._resume: dict | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        sampler = self.sampler
        self.generator.manual_seed(epoch_seed(sampler.seed, sampler.epoch, sampler.rank, 1))
        order = sampler.indices().to(self.images.device)
        skip = 0
        if self._resume is not None and self._resume["epoch"] == sampler.epoch:
            skip = self._resume["batches"]
            self.generator.set_state(self._resume["generator"].to(self.generator.get_state().device))
        self._resume = None
        for batch in order.split(self.batch_size)[skip:]:
            yield self.images[batch], self.labels[batch]

    def state_dict(self) -> dict:
        batches, complete = self.progress() if self.progress is not None else (0, False)
        return {"epoch": self.sampler.epoch, "batches": batches, "complete": complete,
                "generator": self.generator.get_state().cpu()}

    def load_state_dict(self, state: dict) -> None:
        # Lightning iterates once before it sets the epoch of a resumed run: set it here.
        if state["complete"]:
            self.sampler.set_epoch(state["epoch"] + 1)
        else:
            self.sampler.set_epoch(state["epoch"])
            self._resume = state
