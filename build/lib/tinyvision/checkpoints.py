"""Checkpoints and resume: reading a checkpoint file, finding and configuring the run to resume, and
the callbacks and IO plugin that write resumable, never-half-written checkpoints."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from tinyvision.errors import ConfigError
from tinyvision.files import LAST_CHECKPOINT, METRICS_FILE, replacing


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a resumed run continues from, or a message saying why there is none."""
    if not run_dir.is_dir():
        raise ConfigError(f"resume={run_dir} does not exist: give the folder of a run under outputs/")
    if (run_dir / METRICS_FILE).is_file():
        raise ConfigError(f"resume={run_dir} finished already (it has metrics.json): there is nothing to resume")
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
    checkpoint = load_checkpoint_file(last_checkpoint(run_dir))
    saved = checkpoint.get("config")
    if saved is None:
        raise ConfigError(f"{run_dir / 'checkpoints' / 'last.ckpt'} holds no tinyvision config: it cannot be resumed")
    given = [o for o in overrides if o.lstrip("+~").split("=")[0] not in ("resume",) and not o.startswith("hydra.")]
    if given:
        differences = _differences(saved, OmegaConf.to_container(cfg, resolve=True))
        if differences:
            raise ConfigError(
                f"resume={run_dir} was started with other settings than this command: {'; '.join(differences[:8])}. "
                f"Resume with `python train.py resume={run_dir}` alone (it takes the run's own settings), or start a new run"
            )
    saved = _current_targets(saved)
    resumed = OmegaConf.create(_moved(saved, str(saved.get("paths", {}).get("output_dir") or run_dir), str(run_dir)))
    resumed.resume = str(run_dir)
    resumed.paths.output_dir = str(run_dir)
    return resumed


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






