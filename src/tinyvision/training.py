"""The training run: compose data, model and trainer from the config, fit, test the best checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from tinyvision import schema
from tinyvision.callbacks import LogHyperparameters, RunRecord
from tinyvision.cli import trainer_error
from tinyvision.errors import ConfigError, TinyVisionError
from tinyvision.files import write_atomic
from tinyvision.module import ImageClassifier
from tinyvision.sweep import PRUNED_FILE

log = logging.getLogger(__name__)

DATA_INFO_KEYS = ("channels", "image_size", "num_classes", "mean", "std")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, ImageClassifier]:
    """The data module and the classifier a config describes (its values already validated)."""
    try:
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    except InstantiationException as error:
        if isinstance(error.__cause__, TinyVisionError):
            raise error.__cause__ from None  # our message already names the key and the fix
        raise
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data_info = {key: data[key] for key in DATA_INFO_KEYS}
    data_info["dataset"] = data.get("dataset", "folder")
    classifier = ImageClassifier(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        data=data_info,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) or None,
    )
    return datamodule, classifier


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a resumed run continues from, or a message saying why there is none."""
    if not run_dir.is_dir():
        raise ConfigError(f"resume={run_dir} does not exist: give the folder of a run under outputs/")
    if (run_dir / "metrics.json").is_file():
        raise ConfigError(f"resume={run_dir} finished already (it has metrics.json): there is nothing to resume")
    path = run_dir / "checkpoints" / "last.ckpt"
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
    resumed = OmegaConf.create(saved)
    resumed.resume = str(run_dir)
    resumed.paths.output_dir = str(run_dir)
    return resumed


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
    """torch.load with weights_only, failing with a message that names a truncated or foreign file."""
    import pickle
    import zipfile

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if isinstance(error, pickle.UnpicklingError):
            reason = "not a PyTorch checkpoint"  # torch's own text is a paragraph about weights_only
        raise ConfigError(
            f"{path} cannot be read ({type(error).__name__}: {reason}); it may be truncated or not a checkpoint"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def train(cfg: DictConfig, sweep_job: bool = False) -> dict[str, Any]:
    """Train, test on the best checkpoint, write metrics.json into the run dir and return its contents.

    With ``cfg.resume`` set to a run dir, training continues there from its last checkpoint. A job of an
    Optuna sweep (``cfg.hparams_search.trial`` set) reports to its trial each epoch; when the pruner stops
    it, pruned.json is written instead of metrics.json and its contents are returned."""
    run_dir = Path(cfg.paths.output_dir)
    resume_from = last_checkpoint(Path(cfg.resume)) if cfg.get("resume") else None
    if resume_from is None and ((run_dir / "metrics.json").exists() or (run_dir / "checkpoints").exists()):
        raise ConfigError(f"run dir {run_dir} already holds a run: it is kept as it is; start a new run instead")
    schema.validate_train(cfg)  # every key's type and range, before anything is built or written
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, classifier = build(cfg)
    classifier.run_config = OmegaConf.to_container(cfg, resolve=True)

    callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    search = cfg.get("hparams_search")
    pruning, trial_pruned = None, ()  # () catches nothing outside an Optuna trial
    # A trial of an Optuna sweep reports to its study; not when its run dir is resumed alone, nor with prune_on: null.
    if sweep_job and search is not None and search.get("trial") is not None and search.get("prune_on"):
        from optuna import TrialPruned as trial_pruned

        from tinyvision.search import pruning_callback

        pruning = pruning_callback(search)
        callbacks.append(pruning)
    logger_options = {}
    if resume_from is not None:
        # Events the stopped run wrote after its last checkpoint are dropped, so curves have no repeated steps.
        logger_options["purge_step"] = load_checkpoint_file(resume_from)["global_step"]
    loggers = [
        hydra.utils.instantiate(c, **(logger_options if "TensorBoardLogger" in c.get("_target_", "") else {}))
        for c in cfg.get("logger", {}).values() if c is not None
    ]
    callbacks.append(LogHyperparameters(OmegaConf.to_container(cfg, resolve=True)))
    trainer = make_trainer(cfg, callbacks, loggers)
    if sweep_job:
        _refuse_relaunching_strategy(trainer, cfg.trainer.get("strategy"))

    started, started_at = time.perf_counter(), time.time()
    try:
        try:
            trainer.fit(classifier, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        except TinyVisionError:
            if resume_from is None:
                _discard_logs_of_refused_run(trainer)
            raise
        if pruning is not None:
            pruning.check_pruned()  # under DDP the callback stops every rank, then the trial is pruned here
    except trial_pruned:
        return _record_pruned(trainer, run_dir, time.perf_counter() - started)
    checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    test = trainer.test(classifier, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)[0]
    seconds = time.perf_counter() - started

    record = next((c for c in trainer.callbacks if isinstance(c, RunRecord)), None)
    history = record.history if record else []
    metrics = {
        "test/acc": test.get("test/acc"),
        "test/loss": test.get("test/loss"),
        "val/acc_best": max((row.get("val/acc", 0.0) for row in history), default=None),
        "val/acc": history[-1].get("val/acc") if history else None,
        "val/loss": history[-1].get("val/loss") if history else None,
        "epochs": trainer.current_epoch,
        "wall_seconds": round(seconds, 2),
        "started_at": round(started_at, 3),  # Unix time: when fit began, its first step, and when the test ended
        "first_step_at": round(record.first_step_at, 3) if record and record.first_step_at else None,
        "finished_at": round(time.time(), 3),
        "train_seconds": round(record.train_seconds, 2) if record else None,
        "train_samples_per_second": round(record.samples_per_second, 1) if record else None,
        "test_seconds": round(record.test_seconds, 3) if record else None,
        "best_checkpoint": best,
        "run_dir": str(run_dir),
        "history": history,
    }
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
    return metrics


def _discard_logs_of_refused_run(trainer: L.Trainer) -> None:
    """A run refused while its data is read (before its first step) leaves no log files: Lightning opens
    the loggers' files before the data module's setup, where such a refusal happens."""
    record = next((c for c in trainer.callbacks if isinstance(c, RunRecord)), None)
    if record is None or record.first_step_at is not None or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        log_dir = Path(logger.log_dir) if getattr(logger, "log_dir", None) else None
        if log_dir is not None and log_dir.is_dir():
            if hasattr(logger, "finalize"):
                logger.finalize("failed")
            shutil.rmtree(log_dir, ignore_errors=True)


def make_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    """Lightning's Trainer; an argument Lightning refuses is reported as trainer.KEY=VALUE and the reason."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    except InstantiationException as error:
        if isinstance(error.__cause__, (MisconfigurationException, ValueError, TypeError, ModuleNotFoundError)):
            raise trainer_error(OmegaConf.to_container(cfg.trainer, resolve=True), error.__cause__) from None
        raise


def _record_pruned(trainer: L.Trainer, run_dir: Path, seconds: float) -> dict[str, Any]:
    """pruned.json: the epochs a pruned trial ran, with the metric values it reported."""
    record = next((c for c in trainer.callbacks if isinstance(c, RunRecord)), None)
    history = list(record.history) if record else []
    val_acc = trainer.callback_metrics.get("val/acc")
    accuracies = [row["val/acc"] for row in history if "val/acc" in row] + ([float(val_acc)] if val_acc is not None else [])
    result = {
        "status": "pruned",
        "epochs": trainer.current_epoch + 1,
        "val/acc": accuracies[-1] if accuracies else None,
        "val/acc_best": max(accuracies, default=None),
        "wall_seconds": round(seconds, 2),
        "run_dir": str(run_dir),
        "history": history,
    }
    if trainer.is_global_zero:
        write_json(run_dir / PRUNED_FILE, result)
    return result


def _refuse_relaunching_strategy(trainer: L.Trainer, strategy: Any) -> None:
    """In a sweep job, refuse a strategy that starts its other ranks by running the command line again."""
    # Lightning's launcher for strategy=ddp has no public name; it re-runs sys.argv, sweep and all.
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if isinstance(launcher, _SubprocessScriptLauncher) and not (environment and environment.creates_processes_externally):
        raise ConfigError(
            f"trainer.strategy={strategy} with {trainer.num_devices} devices cannot run inside a "
            "multirun (-m): Lightning starts the other ranks by running this command again, -m included, so every rank "
            "would run the whole sweep. Train DDP runs one at a time without -m; sweep with one process per trial "
            "(hydra/launcher=joblib runs trials in parallel on one machine); or on a cluster use hydra/launcher=slurm, "
            "where SLURM starts one task per device and DDP works inside each trial"
        )


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(payload, indent=2) + "\n")
