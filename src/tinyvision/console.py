"""The console and the run's log file: the one ``error:`` line of a refused command, and lines written to the log file
alone. Below the scripts' entry (tinyvision.cli) and the training code alike, so that both word an error the same
way."""

from __future__ import annotations

import logging
import sys

from tinyvision.errors import TinyVisionError


def log_to_file(message: str, level: int = logging.INFO) -> None:
    """Write a line to the run's log file only (when Hydra has set one up), not to the console again."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("tinyvision", level, __file__, 0, message, None, None))


def report(error: TinyVisionError) -> None:
    """Print the one line on stderr, once; the run's log file (when Hydra has set one up) keeps it too."""
    message = "error: " + str(error).replace("\r", "\\r").replace("\n", "\\n")  # a value's line break stays in the line
    log_to_file(message, logging.ERROR)
    print(message, file=sys.stderr, flush=True)
