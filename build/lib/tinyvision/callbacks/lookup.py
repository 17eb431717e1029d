"""Finding one of a run's callbacks: the one way the run and other callbacks reach a callback's state."""

from __future__ import annotations

from typing import TypeVar

import lightning as L

C = TypeVar("C", bound=L.Callback)


def find_callback(trainer: L.Trainer, kind: type[C]) -> C | None:
    """The trainer's first callback of ``kind``, or None when the run has none (switched off in conf/callbacks)."""
    return next((callback for callback in trainer.callbacks if isinstance(callback, kind)), None)
