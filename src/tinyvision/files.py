"""What a run folder holds, by name, and the writer that never leaves half a file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tinyvision.errors import ConfigError, WriteFailed
from tinyvision.schema import Section, spec

# The package's own config groups (conf/ at the checkout's root links here), so an installed tinyvision has them too.
CONF_DIR = Path(__file__).resolve().parent / "conf"
# A run folder (outputs/runs/<run> or a sweep's job folder)
METRICS_FILE = "metrics.json"  # a finished run's figures
PRUNED_FILE = "pruned.json"  # written instead by a trial of an Optuna sweep that its pruner stopped
FAILURE_FILE = "failure.json"  # a sweep job that failed, with its error
LAST_CHECKPOINT = "checkpoints/last.ckpt"  # for resume
# Any command's output folder (a run, a sweep, eval's, predict's, export's, find_lr's): created with O_EXCL before Hydra
# writes into the folder, it names the command that owns the folder; held locked (flock) while that command runs.
CLAIM_FILE = ".tinyvision_claim"
# A sweep folder (outputs/multirun/<sweep>) of an Optuna search
STUDY_FILE = "optuna.db"  # the study's SQLite storage
BEST_FILE = "best.yaml"  # the best trial and the command that trains it again
STUDY_RESULT = "study.yaml"  # every trial, read back by the sweep summary
# An exported model (export.py) and its card, read back by predict.py
CARD_SUFFIX = ".json"


class PathsSettings(Section):
    """``paths``: where datasets are read from and where a command writes (Hydra's run folder by default)."""

    data_dir: str = spec("a directory path", "data", "data")
    output_dir: str = spec("a directory path", "outputs/runs/my_run")


def card_path(model: Path) -> Path:
    """A model's card: its whole file name plus .json (model.onnx.json), so two formats of one name keep two cards."""
    return model.with_name(model.name + CARD_SUFFIX)


@contextlib.contextmanager
def replacing(path: str | Path, hidden: bool = False):
    """Yields a temporary path beside ``path``; when the block ends, the file written there replaces ``path`` in one
    rename. A failed write (a full disk, no permission) removes the temporary file, keeps what ``path`` held, and
    ends in WriteFailed naming the file and the reason."""
    path = Path(path)
    partial = path.with_name(f"{'.' if hidden else ''}{path.name}.partial")
    if len(partial.name.encode()) > NAME_MAX:  # a legal name whose sibling would not be: a short one instead
        partial = path.with_name(f".{hashlib.sha1(path.name.encode()).hexdigest()[:16]}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        os.replace(partial, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        reason = os.strerror(error.errno) if error.errno else str(error)
        hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
                errno.EACCES: "choose a folder you can write to", errno.EROFS: "choose a writable folder"}.get(
                    error.errno, "check the folder")
        kept = " (the previous file is kept)" if path.exists() else ""
        raise WriteFailed(f"cannot write {path}: {reason}{kept}: {hint}, or point the run at another folder") from None


NAME_MAX = 255  # bytes in one file name: Linux's and macOS's common file systems


def too_long(value: str) -> str | None:
    """Why a path cannot exist on a common file system (a name over 255 bytes, the whole over 4096), or None."""
    longest = max((len(part.encode()) for part in str(value).split("/")), default=0)
    if longest > NAME_MAX:
        return f"a name in it is {longest} bytes, more than a file system allows ({NAME_MAX})"
    if len(str(value).encode()) > 4096:
        return f"it is {len(str(value).encode())} bytes, more than a path may be (4096)"
    return None


def write_atomic(path: str | Path, text: str) -> None:
    with replacing(path) as partial:
        partial.write_text(text)


def output_file(key: str, value: str | Path, default_name: str, suffix: str | None = None) -> Path:
    """The file a user's ``key=value`` output setting names, checked before any work is done: an existing folder
    gets ``default_name`` inside it; with ``suffix`` the name must end in it (so a model is never written under its
    card's name); a parent that is a file, not a folder, is named."""
    path = Path(value)
    if path.is_dir():
        path = path / default_name
    if suffix is not None and path.suffix != suffix:
        raise ConfigError(f"{key}={value}: this file must end in {suffix}, e.g. {key}={path.with_suffix(suffix)}")
    blocking = next((parent for parent in reversed(path.parents) if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"{key}={value}: {blocking} is a file, not a folder: choose a path inside a folder")
    card = len(card_path(path).name.encode())  # the longest name written beside it (export's JSON card)
    if card > NAME_MAX:
        raise ConfigError(f"{key}={value}: with the card beside it ({card_path(path).name[-20:]}) a name would be {card} "
                          f"bytes, more than a file system allows ({NAME_MAX}): shorten the name by {card - NAME_MAX}")
    return path


def save_figure(figure, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG file, through replacing() as every other file: whole or not at all."""
    with replacing(path) as partial:
        figure.savefig(partial, dpi=dpi, format="png")


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(payload, indent=2) + "\n")
