"""The training run: compose data, model and trainer from the config, fit, test the best checkpoint."""

from __future__ import annotations

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
from tinyvision.checkpoints import last_checkpoint, load_checkpoint_file
from tinyvision.cli import trainer_error
from tinyvision.errors import ConfigError, TinyVisionError
from tinyvision.files import METRICS_FILE, PRUNED_FILE, write_json
from tinyvision.module import ImageClassifier

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


def train(cfg: DictConfig, sweep_job: bool = False) -> dict[str, Any]:
    """Train, test on the best checkpoint, write metrics.json into the run dir and return its contents.

    With ``cfg.resume`` set to a run dir, training continues there from its last checkpoint. A job of an
    Optuna sweep (``cfg.hparams_search.trial`` set) reports to its trial each epoch; when the pruner stops
    it, pruned.json is written instead of metrics.json and its contents are returned."""
    run_dir = Path(cfg.paths.output_dir)
    resume_from = last_checkpoint(Path(cfg.resume)) if cfg.get("resume") else None
    if resume_from is None and ((run_dir / METRICS_FILE).exists() or (run_dir / "checkpoints").exists()):
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
        write_json(run_dir / METRICS_FILE, metrics)
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
