"""What a run folder holds, by name, and the writer that never leaves half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# A run folder (outputs/runs/<run> or a sweep's job folder)
METRICS_FILE = "metrics.json"  # a finished run's figures
PRUNED_FILE = "pruned.json"  # written instead by a trial of an Optuna sweep that its pruner stopped
FAILURE_FILE = "failure.json"  # a sweep job that failed, with its error
LAST_CHECKPOINT = "checkpoints/last.ckpt"  # for resume
# A sweep folder (outputs/multirun/<sweep>) of an Optuna search
STUDY_FILE = "optuna.db"  # the study's SQLite storage
BEST_FILE = "best.yaml"  # the best trial and the command that trains it again
STUDY_RESULT = "study.yaml"  # every trial, read back by the sweep summary


def write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(payload, indent=2) + "\n")
