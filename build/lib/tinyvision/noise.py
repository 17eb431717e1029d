"""Lines that libraries print and a user can do nothing about, silenced in one place for every script."""

from __future__ import annotations

import logging
import warnings

# Lightning's info lines that say nothing to act on: an advert for its cloud logger at every run, a note that it
# will not add a second model summary next to the RichModelSummary that conf/callbacks adds, and the device census
# it prints when the Trainer is made ("GPU available: False, used: False", "TPU available: ...": on stderr, so a
# run refused after that, by its data, printed them above its one error line). The census is dropped for every run,
# not only refused ones: a GPU left unused still gets Lightning's warning ("GPU available but not used"), and the
# device used is the accelerator the config names.
_DROPPED_LINES = ("💡 Tip", "Trainer already configured with model summary callbacks", "GPU available:", "TPU available:",
                  "HPU available:", "IPU available:")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DROPPED_LINES)


# Warnings by message (tests/conftest.py hands the same list to pytest, which resets filters for every test):
# - Lightning 2.6 calls a torch API that torch 2.14 deprecates: Lightning's, not the user's;
# - Lightning's advice to lower log_every_n_steps for a short epoch: tinyvision logs once an epoch, never per step;
# - Lightning's "The `srun` command is available on your system but is not used" at every run on a machine with SLURM
#   installed (a cluster's login node, or this project's CI): training there without srun is a choice, and a batch job
#   that forgets srun is told in the SLURM docs (docs/faults-and-resume.md) what it loses.
KNOWN_WARNINGS = (r".*isinstance\(treespec, LeafSpec\).*", r".*is smaller than the logging interval.*",
                  r"The `srun` command is available on your system but is not used.*")


def silence_known_noise() -> None:
    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdverts())
