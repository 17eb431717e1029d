"""Lines that libraries print and a user can do nothing about, silenced in one place for every script."""

from __future__ import annotations

import logging
import warnings


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")  # Lightning advertises its cloud logger at every run


def silence_known_noise() -> None:
    # Lightning 2.6 calls a torch API that torch 2.14 deprecates; the warning is Lightning's, not the user's.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdverts())
