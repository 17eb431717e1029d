"""Checkpoints and resume: reading a checkpoint file, finding and configuring the run to resume, and
the callbacks and IO plugin that write resumable, never-half-written checkpoints."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from tinyvision.errors import ConfigError
from tinyvision.files import LAST_CHECKPOINT, METRICS_FILE, replacing

log = logging.getLogger(__name__)


def finished_epochs(run_dir: Path) -> int | None:
    """The epochs a finished run trained (its metrics.json), or None for a run that did not finish."""
    import json

    try:
        return int(json.loads((run_dir / METRICS_FILE).read_text())["epochs"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # a metrics.json that cannot be read still marks the run finished


def last_checkpoint(run_dir: Path, max_epochs: int | None = None) -> Path:
    """The checkpoint a resumed run continues from, or a message saying why there is none. A finished run continues
    only to more epochs than it trained (``max_epochs``, the command's trainer.max_epochs)."""
    if not run_dir.is_dir():
        raise ConfigError(f"resume={run_dir} does not exist: give the folder of a run under outputs/")
    trained = finished_epochs(run_dir)
    if trained is not None and (max_epochs is None or (max_epochs != -1 and max_epochs <= trained)):
        given = f"trainer.max_epochs={max_epochs}: " if max_epochs is not None else ""
        raise ConfigError(f"{given}resume={run_dir} finished already after {trained} epochs (it has metrics.json): continue "
                          f"it to more epochs with trainer.max_epochs, e.g. python train.py resume={run_dir} "
                          f"trainer.max_epochs={trained + 5}")
    path = run_dir / LAST_CHECKPOINT
    if not path.is_file():
        raise ConfigError(
            f"resume={run_dir} has no checkpoints/last.ckpt: the run stopped before its first checkpoint "
            "(written after every epoch and every callbacks.last_checkpoint.every_n_train_steps steps); start it anew"
        )
    return path


def config_for_resume(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config to resume ``cfg.resume`` with: the run's own when the command gives nothing else,
    else the command's, which must then equal the run's (a difference is refused, naming the keys)."""
    run_dir = Path(cfg.resume)
    keys = [o.lstrip("+~").split("=")[0] for o in overrides if not o.startswith("hydra.")]
    # The one setting a resume may change: how many epochs the run trains (continue a run, finished or not, further).
    max_epochs = cfg.trainer.get("max_epochs") if CONTINUE_KEY in keys else None
    if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < -1):
        raise ConfigError(f"{CONTINUE_KEY}={max_epochs}: a whole number of epochs (-1: no end), e.g. {CONTINUE_KEY}=10")
    checkpoint = load_checkpoint_file(last_checkpoint(run_dir, max_epochs))
    saved = checkpoint.get("config")
    if saved is None:
        raise ConfigError(f"{run_dir / 'checkpoints' / 'last.ckpt'} holds no tinyvision config: it cannot be resumed")
    missing = [key for key in RUN_SECTIONS if not isinstance(saved, dict) or not isinstance(saved.get(key), dict)]
    if missing:
        raise ConfigError(f"resume={run_dir}: checkpoints/last.ckpt holds a config that is not a tinyvision training run's "
                          f"(it lacks {', '.join(missing)}): it cannot be resumed; start a new run")
    if any(key not in ("resume", CONTINUE_KEY, *MACHINE_KEYS) and not key.startswith("paths.") for key in keys):
        current = OmegaConf.to_container(cfg, resolve=True)
        # the settings this command gives (a group chosen counts for its keys), not the defaults it did not repeat
        given = tuple(key for key in keys if key not in ("resume", CONTINUE_KEY, *MACHINE_KEYS))
        differences = [d for d in _differences(saved, current) if not d.startswith(f"{CONTINUE_KEY}:")
                       and any(d.split(":")[0] == key or d.startswith(f"{key}.") for key in given)]
        if differences:
            finished = finished_epochs(run_dir)
            alone = f"python train.py resume={run_dir}" + (f" {CONTINUE_KEY}={max_epochs or finished + 5}"
                                                           if finished is not None else "")
            raise ConfigError(
                f"resume={run_dir} was started with other settings than this command: {'; '.join(differences[:8])}. "
                f"Resume with `{alone}` (it takes the run's own settings; {CONTINUE_KEY}=N continues it to N "
                f"epochs), or start a new run from its weights with init_from={run_dir}"
            )
    saved = _current_targets(saved)
    resumed = OmegaConf.create(_moved(saved, str(saved.get("paths", {}).get("output_dir") or run_dir), str(run_dir)))
    resumed.resume = str(run_dir)
    resumed.paths.output_dir = str(run_dir)
    if max_epochs is not None:
        resumed.trainer.max_epochs = max_epochs
    if "paths.data_dir" in keys:  # where this machine keeps the data: the machine's, not the run's
        resumed.paths.data_dir = cfg.paths.data_dir
    for key in MACHINE_KEYS:
        if key in keys:
            resumed[key] = cfg[key]
    return resumed


CONTINUE_KEY = "trainer.max_epochs"
MACHINE_KEYS = ("threads",)  # how this machine runs the run, not what it trains: a resume may change them
RUN_SECTIONS = ("model", "data", "optimizer", "trainer")  # what every run's saved config has


# Classes that moved, by the _target_ a run started before the move saved in its checkpoint's config.
MOVED_TARGETS = {
    "tinyvision.guards.StopOnNonFiniteLoss": "tinyvision.callbacks.StopOnNonFiniteLoss",
    "tinyvision.guards.LastCheckpoint": "tinyvision.callbacks.LastCheckpoint",
    "tinyvision.guards.ResumableRandomState": "tinyvision.callbacks.ResumableRandomState",
    "tinyvision.guards.AtomicCheckpointIO": "tinyvision.checkpoints.AtomicCheckpointIO",
    "tinyvision.checkpoints.LastCheckpoint": "tinyvision.callbacks.LastCheckpoint",
    "tinyvision.checkpoints.ResumableRandomState": "tinyvision.callbacks.ResumableRandomState",
    "tinyvision.pictures.TensorBoardPictures": "tinyvision.callbacks.TensorBoardPictures",
}


def _current_targets(value: Any) -> Any:
    """The saved config with each moved class named where it lives now, so an older run resumes."""
    if isinstance(value, dict):
        return {key: MOVED_TARGETS.get(item, item) if key == "_target_" else _current_targets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_current_targets(item) for item in value]
    return value


def _moved(value: Any, old: str, new: str) -> Any:
    """The saved config with every path inside the run's old folder moved into its folder now: a run folder
    copied or moved elsewhere resumes there (the checkpoint holds its settings resolved, old paths included)."""
    if isinstance(value, dict):
        return {key: _moved(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_moved(item, old, new) for item in value]
    if isinstance(value, str) and old != new and (value == old or value.startswith(old.rstrip("/") + "/")):
        return new + value[len(old):]
    return value


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Keys whose values differ, as 'key: run value -> command value' (paths and resume are ignored)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current)):
            name = f"{prefix}{key}"
            if name in ("resume", "paths"):
                continue
            found += _differences(saved.get(key, "<absent>"), current.get(key, "<absent>"), f"{name}.")
        return found
    return [] if saved == current else [f"{prefix.rstrip('.')}: {saved} in the run -> {current} in this command"]


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """torch.load with weights_only, failing with a message that names an empty, truncated or foreign file."""
    from tinyvision.boundaries import load_torch

    checkpoint = load_torch("resume", path, "a PyTorch checkpoint", "it may be truncated or not a checkpoint: start the run anew")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint




class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, flushes it to disk, then renames it over
    the old one: a kill at any moment leaves either the previous checkpoint or the new one, whole.

    Lightning's own save stages the file in the system's temporary folder, and moving it into a run dir
    on another file system (a cluster's shared disk) is a copy, which a kill can cut in half.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        # A full disk or a refused write: the .partial file goes, the previous checkpoint stays, one line says why.
        with replacing(path, hidden=True) as partial, open(partial, "wb") as handle:
            try:
                torch.save(checkpoint, handle)
            except RuntimeError as error:  # torch's zip writer reports a short write (a full disk) as its own error
                if "inline_container" not in str(error) and "write" not in str(error).lower():
                    raise
                full = shutil.disk_usage(partial.parent).free < (1 << 20)
                raise OSError(errno.ENOSPC if full else errno.EIO, str(error).splitlines()[0]) from None
            handle.flush()
            os.fsync(handle.fileno())








def start_from_weights(classifier, value: str) -> Path:
    """Fine-tuning: ``init_from`` (a trained run's folder, whose best.ckpt the final test read, or a .ckpt file) gives
    the classifier's network its weights; the data, optimizer and schedule are this run's. A new head (another number
    of classes) starts from random weights; any other tensor of another shape or name is another architecture and
    refused. Returns the checkpoint read."""
    from tinyvision.boundaries import load_torch

    given = Path(value)
    fix = "give a trained run's folder or a .ckpt file, e.g. init_from=outputs/runs/<run>"
    if given.is_dir():
        found = [given / "checkpoints" / name for name in ("best.ckpt", "last.ckpt") if (given / "checkpoints" / name).is_file()]
        if not found:
            raise ConfigError(f"init_from={value} holds no checkpoints/best.ckpt or last.ckpt: {fix}")
        given = found[0]
    checkpoint = load_torch("init_from", given, "a PyTorch checkpoint", fix)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"init_from={value} is not a Lightning checkpoint (it has no state_dict): {fix}")
    theirs = {key: tensor for key, tensor in checkpoint["state_dict"].items() if key.startswith("net.")}
    ours = {key: tensor for key, tensor in classifier.state_dict().items() if key.startswith("net.")}
    trained_model = ((checkpoint.get("config") or {}).get("model") or {}).get("_target_", "another model")
    if set(theirs) != set(ours):
        odd = sorted(set(theirs) ^ set(ours))
        this_model = classifier.hparams.model.get("_target_", "this run's model")
        raise ConfigError(f"init_from={value}: its network ({trained_model}) is another architecture than this run's "
                          f"({this_model}; {len(odd)} tensors differ by name, e.g. {odd[0]}): fine-tune with the model it "
                          "was trained with")
    reshaped = [key for key in ours if theirs[key].shape != ours[key].shape]
    head = list(ours)[-2:]  # the last layer's weight and bias: another number of classes
    if any(key not in head for key in reshaped):
        key = next(key for key in reshaped if key not in head)
        raise ConfigError(f"init_from={value}: {key} is {list(theirs[key].shape)} there and {list(ours[key].shape)} here: "
                          "the input (data.channels, data.image_size) or the model's settings differ from the run it "
                          "was trained in; only the last layer (the classes) may differ")
    if reshaped:
        log.info("init_from=%s: a new head (%s) for %d classes, from random weights", value,
                                         ", ".join(reshaped), ours[reshaped[-1]].shape[0])
    classifier.load_state_dict({**classifier.state_dict(), **{k: v for k, v in theirs.items() if k not in reshaped}})
    return given
