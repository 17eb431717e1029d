"""The training run: compose data, model and trainer from the config, fit, test the best checkpoint."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from tinyvision import slurm
from tinyvision.audit.heldout import write_heldout
from tinyvision.boundaries import is_state_dict_mismatch, weights_do_not_fit
from tinyvision.callbacks import (
    FitChecks,
    LastCheckpoint,
    LogHyperparameters,
    RememberLoggerRuns,
    RunInterrupted,
    RunRecord,
    ShareCores,
    StopOnSignal,
    TestReport,
    find_callback,
)
from tinyvision.checkpoints import finished_epochs, last_checkpoint, load_checkpoint_file, start_from_weights
from tinyvision.config import RunSettings, validate_train
from tinyvision.errors import ConfigError, TinyVisionError
from tinyvision.files import METRICS_FILE, PRUNED_FILE, write_json
from tinyvision.host_memory import keep_freed_memory, set_up_objects_frozen
from tinyvision.hparams import compared_hparams, group_choices
from tinyvision.loggers import MLFLOW_RUN_KEY, WANDB_RUN_KEY, log_final_figures, log_run_files
from tinyvision.module import ImageClassifier
from tinyvision.report import PER_CLASS_FILE, write_per_class_csv
from tinyvision.trainer import first_line, make_trainer

log = logging.getLogger(__name__)

SWEEP_JOB_FOLDER = re.compile(r"\d+(_fold\d+)?")


def build(settings: RunSettings) -> tuple[L.LightningDataModule, ImageClassifier]:
    """The data module and the classifier of a run's checked settings (``validate_train``)."""
    classifier = ImageClassifier(  # the data's input definition is the classifier's: it normalizes uint8 images
        model=settings.model,
        data=settings.data.input_definition(),
        optimizer=settings.optimizer,
        scheduler=settings.scheduler,
        loss=settings.loss,
    )
    return settings.data.build(), classifier


def train(cfg: DictConfig, sweep_job: bool = False) -> dict[str, Any]:
    """Train, test on the best checkpoint, write metrics.json into the run dir and return its contents.

    With ``cfg.resume`` set to a run dir, training continues there from its last checkpoint. A job of an
    Optuna sweep (``cfg.hparams_search.trial`` set) reports to its trial each epoch; when the pruner stops
    it, pruned.json is written instead of metrics.json and its contents are returned."""
    run_dir = Path(cfg.paths.output_dir)
    if sweep_job and slurm.job_id() is not None:  # a SLURM job's own trials, in their folders, for its requeued start
        earlier = _earlier_start_of_this_trial(run_dir)
        if earlier is not None:
            return earlier
    resume_from = _checkpoint_to_resume(cfg, run_dir)
    # Resolved and checked once, before anything is built or written: the run is built from these values alone.
    settings = validate_train(cfg)
    keep_freed_memory()  # each step's tensors reuse the last step's memory, without page faults (host_memory.py)
    with slurm.EndWarning(settings.slurm) as warning:  # never the signal's default action, wherever it lands
        return _train(settings, run_dir, resume_from, sweep_job, warning)


def _train(settings: RunSettings, run_dir: Path, resume_from: Path | None, sweep_job: bool, warning) -> dict[str, Any]:
    L.seed_everything(settings.seed, workers=True, verbose=False)
    datamodule, classifier = build(settings)
    # read once here (Lightning reads it again at fit): its weights checked, its step and logger runs for the loggers
    resumed = load_checkpoint_file(resume_from) if resume_from is not None else None
    if resumed is not None:  # before the trainer: Lightning's notes would come before the one line
        _refuse_weights_that_do_not_fit(classifier, resumed, resume_from)
    with _finished_record_kept(run_dir, resume_from, settings.trainer.max_epochs):
        return _fit_and_test(settings, run_dir, resume_from, resumed, sweep_job, warning, datamodule, classifier)


def _fit_and_test(settings: RunSettings, run_dir: Path, resume_from: Path | None, resumed: dict[str, Any] | None,
                  sweep_job: bool, warning, datamodule, classifier) -> dict[str, Any]:
    classifier.run_config = settings.config
    # a new run that starts from a trained run's weights (a resumed one has all of its state in its checkpoint)
    classifier.init_from = str(start_from_weights(classifier, settings.init_from)) if settings.init_from and \
        resume_from is None else None
    classifier.test_tta = settings.tta
    pruning, trial_pruned = _pruning_callback(settings) if sweep_job else (None, ())  # () catches nothing
    trainer = make_trainer(settings, _callbacks(settings, pruning, warning), _loggers(settings, resumed))
    if sweep_job:
        _refuse_relaunching_strategy(trainer, settings.trainer.strategy)

    started, started_at = time.perf_counter(), time.time()
    try:
        with _signals_stop(trainer), set_up_objects_frozen():  # no full garbage collection walks set-up's objects
            _fit(trainer, classifier, datamodule, resume_from, pruning)
    except trial_pruned:
        return _record_pruned(trainer, run_dir, time.perf_counter() - started)
    record = find_callback(trainer, RunRecord)
    log_final_figures(trainer, round(record.train_seconds, 2) if record else None, trainer.current_epoch)
    with _signals_stop(trainer), set_up_objects_frozen():
        best, test = _test_best_checkpoint(trainer, classifier, datamodule)
    metrics = _run_metrics(trainer, test, best, run_dir, time.perf_counter() - started, started_at)
    if trainer.is_global_zero and settings.data.folds:  # the fold's out-of-fold probabilities, for the audit
        metrics["heldout"] = write_heldout(run_dir, classifier, datamodule)
    if trainer.is_global_zero:
        write_json(run_dir / METRICS_FILE, metrics)
        if metrics.get("test_report"):
            write_per_class_csv(run_dir / PER_CLASS_FILE, metrics["test_report"])
        log_run_files(trainer, run_dir, best)
    return metrics


@contextlib.contextmanager
def _signals_stop(trainer: L.Trainer):
    """A SIGTERM or SIGINT that ended fit or test leaves as RunInterrupted, whatever Lightning raised for it
    (its SIGTERMException is a SystemExit with status 0, which would tell a scheduler the run succeeded)."""
    try:
        yield
    except RunInterrupted:
        raise
    except BaseException:
        stop = find_callback(trainer, StopOnSignal)
        interrupted = stop.interrupted(trainer) if stop is not None else None
        if interrupted is None:
            raise
        raise interrupted from None


def _checkpoint_to_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint a resumed run continues from; a new run must not land on an earlier one."""
    if cfg.get("resume"):
        return last_checkpoint(Path(cfg.resume), cfg.trainer.get("max_epochs"))
    if slurm.job_id() is not None and slurm.earlier_folder([run_dir], _this_command()) and slurm.resumable(run_dir):
        return last_checkpoint(run_dir)  # a trial of a requeued SLURM job's sweep: its folder is the same again
    if (run_dir / METRICS_FILE).exists() or (run_dir / "checkpoints").exists():
        raise ConfigError(f"run dir {run_dir} already holds a run: it is kept as it is; start a new run instead")
    return None


@contextlib.contextmanager
def _finished_record_kept(run_dir: Path, resume_from: Path | None, max_epochs: int | None):
    """A finished run continued to more epochs: its metrics.json is kept beside the one the continuation writes
    (until then the folder reads as an unfinished run, which resume= alone continues). A continuation that ends
    before it has written a checkpoint (refused, or stopped in its first steps) puts the record back: the folder is
    the finished run it was."""
    trained = finished_epochs(run_dir) if resume_from is not None else None
    if trained is None:
        yield
        return
    kept, before = run_dir / f"metrics_epoch{trained}.json", _stat(resume_from)
    (run_dir / METRICS_FILE).replace(kept)
    log.info("continuing %s from epoch %d to %s; its metrics.json is kept as %s", run_dir, trained, max_epochs, kept.name)
    try:
        yield
    except BaseException:
        if _stat(resume_from) == before and not (run_dir / METRICS_FILE).exists():
            kept.replace(run_dir / METRICS_FILE)
        raise


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        return path.stat().st_mtime_ns, path.stat().st_size
    except OSError:
        return None


def _refuse_weights_that_do_not_fit(classifier, checkpoint: dict[str, Any], checkpoint_path: Path) -> None:
    """The checkpoint's weights load into the network its saved config builds (Lightning loads them again at fit)."""
    try:
        classifier.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        if not is_state_dict_mismatch(error):
            raise
        raise weights_do_not_fit("resume", checkpoint_path.parent.parent, error, "the network its saved config builds",
                                 "the checkpoint and its config do not belong together: start a new run") from None


def _this_command() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    # as typed: an override holding ${oc.env:...} is not resolved here (a missing variable is the schema's to word)
    return slurm.command_of(OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False))


def _earlier_start_of_this_trial(run_dir: Path) -> dict[str, Any] | None:
    """In a SLURM job's sweep, each trial's folder is marked with the job and the trial's overrides; after a requeue,
    a trial that finished in the job's earlier start is not trained again: its metrics.json is its result."""
    command = _this_command()
    if slurm.earlier_folder([run_dir], command) is None:
        slurm.mark(run_dir, command)
        return None
    if (run_dir / METRICS_FILE).is_file():
        log.info("%s finished in this SLURM job's earlier start: its metrics.json is the result", run_dir)
        return json.loads((run_dir / METRICS_FILE).read_text())
    return None


def _pruning_callback(settings: RunSettings) -> tuple[L.Callback | None, type[Exception] | tuple]:
    """A trial of an Optuna sweep reports to its study (not when its run dir is resumed alone, nor with
    prune_on: null); with the callback comes the exception that says the pruner stopped the trial."""
    search = settings.config.get("hparams_search")
    if settings.search is None or settings.search.trial is None or not settings.search.prune_on:
        return None, ()
    from optuna import TrialPruned

    from tinyvision.search import pruning_callback

    return pruning_callback(search), TrialPruned


def _callbacks(settings: RunSettings, pruning, warning=None) -> list[L.Callback]:
    callbacks = [_callback(f"callbacks.{name}", section) for name, section in settings.callbacks.items()]
    callbacks = [c for c in callbacks if c is not None]  # a factory may say "off" (callbacks.ema.decay=0)
    # last.ckpt after every other checkpoint of the same moment (best.ckpt at an epoch's end): a kill during the
    # epoch's last write then leaves last.ckpt whole at the step before (tests/test_faults.py), whatever the order of
    # the callbacks in conf/callbacks (Lightning runs checkpoint callbacks last, in their own order).
    callbacks.sort(key=lambda callback: isinstance(callback, LastCheckpoint))
    callbacks.append(LogHyperparameters(compared_hparams(settings.config, group_choices())))
    callbacks.append(RememberLoggerRuns())
    callbacks.append(FitChecks())  # settings only the data's size can refuse, before the first step
    callbacks.append(StopOnSignal(warning))  # always: a stopped run must never look finished
    callbacks.append(ShareCores(settings.threads))  # runs side by side share the cores instead of each taking all
    return callbacks + ([pruning] if pruning is not None else [])


def _callback(key: str, section: Mapping[str, Any]) -> L.Callback | None:
    """A configured callback; a value its class refuses (Lightning's ModelCheckpoint with save_top_k=abc) is one line
    naming the section, not Hydra's three."""
    try:
        return hydra.utils.instantiate(section)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, TinyVisionError):
            raise cause from None  # the callback's own one line
        if not isinstance(cause, (TypeError, ValueError)):
            raise
        settings = ", ".join(f"{k}={v}" for k, v in section.items() if not k.startswith("_"))
        raise ConfigError(f"{key}: {section.get('_target_')} refused its settings ({settings}): "
                          f"{first_line(str(cause))}; check each value's type against the class's arguments") from None


def _loggers(settings: RunSettings, resumed: dict[str, Any] | None) -> list:
    """The configured loggers; a resumed run's (``resumed``: its checkpoint) TensorBoard logger drops the events
    written after its checkpoint, so curves have no repeated steps, and its MLflow and W&B loggers continue the
    MLflow and W&B runs of the checkpoint. A new MLflow or W&B run is named after the run dir (a sweep's: sweep/job)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    checkpoint = resumed or {}
    purge_step = checkpoint.get("global_step")
    run_dir = Path(settings.paths.output_dir)
    # a sweep's job folder (<job>, or <trial>_fold<i> in a study of folds) is named after its sweep too
    run_name = f"{run_dir.parent.name}/{run_dir.name}" if SWEEP_JOB_FOLDER.fullmatch(run_dir.name) else run_dir.name
    loggers = []
    for name, section in settings.logger.items():
        make = hydra.utils.instantiate(section, _partial_=True)
        kind = make.func if isinstance(make.func, type) else type(None)
        if purge_step is not None and issubclass(kind, TensorBoardLogger):
            make = functools.partial(make, purge_step=purge_step)
        if issubclass(kind, MLFlowLogger) and checkpoint.get(MLFLOW_RUN_KEY):
            make = functools.partial(make, run_id=checkpoint[MLFLOW_RUN_KEY])
        elif issubclass(kind, MLFlowLogger) and not make.keywords.get("run_name"):
            make = functools.partial(make, run_name=run_name)
        if issubclass(kind, WandbLogger) and checkpoint.get(WANDB_RUN_KEY):
            make = functools.partial(make, id=checkpoint[WANDB_RUN_KEY])
        if issubclass(kind, WandbLogger) and not make.keywords.get("name"):
            make = functools.partial(make, name=run_name)
        try:
            loggers.append(make())
        except TypeError as error:  # a key the logger's class does not take (+logger.mlflow.foo=1)
            unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
            key = f"logger.{name}.{unexpected.group(1)}={section.get(unexpected.group(1))}" if unexpected else \
                f"logger.{name}"
            raise ConfigError(f"{key}: {section.get('_target_')} does not take it ({first_line(str(error))}); remove it "
                              "or see the logger's arguments") from None
    return loggers


def _fit(trainer: L.Trainer, classifier, datamodule, resume_from: Path | None, pruning) -> None:
    try:
        trainer.fit(classifier, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except TinyVisionError:
        if resume_from is None:
            _discard_logs_of_refused_run(trainer)
        raise
    if pruning is not None:
        pruning.check_pruned()  # under DDP the callback stops every rank, then the trial is pruned here


def _test_best_checkpoint(trainer: L.Trainer, classifier, datamodule) -> tuple[str | None, dict[str, float]]:
    checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    if best is not None and not Path(best).is_file() and (Path(checkpoint.dirpath) / Path(best).name).is_file():
        best = str(Path(checkpoint.dirpath) / Path(best).name)  # a resumed run whose folder was moved: the copy here
    return best, trainer.test(classifier, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)[0]


def _run_metrics(trainer: L.Trainer, test: dict, best: str | None, run_dir: Path, seconds: float,
                 started_at: float) -> dict[str, Any]:
    """metrics.json: the final figures, timings and the per-epoch history."""
    record = find_callback(trainer, RunRecord)
    report = getattr(find_callback(trainer, TestReport), "report", None)
    history = record.history if record else []
    last = history[-1] if history else {}
    return {
        **{key: value for key, value in test.items() if key not in ("test/acc", "test/loss")},  # the report's figures
        "test/acc": test.get("test/acc"),
        "test/loss": test.get("test/loss"),
        "val/acc_best": last.get("val/acc_best"),  # the module's running maximum, as logged
        "val/acc": last.get("val/acc"),
        "val/loss": last.get("val/loss"),
        "epochs": trainer.current_epoch,
        "wall_seconds": round(seconds, 2),
        "started_at": round(started_at, 3),  # Unix time: when fit began, its first step, and when the test ended
        "first_step_at": round(record.first_step_at, 3) if record and record.first_step_at else None,
        "finished_at": round(time.time(), 3),
        "train_seconds": round(record.train_seconds, 2) if record else None,
        "train_samples_per_second": round(record.samples_per_second, 1) if record else None,
        "test_seconds": round(record.test_seconds, 3) if record else None,
        "best_checkpoint": best,
        "init_from": getattr(trainer.lightning_module, "init_from", None),  # the checkpoint a fine-tuned run started from
        "run_dir": str(run_dir),
        "test_report": report,  # per class, macro and weighted averages (tinyvision.report)
        "warnings": record.warnings if record else [],  # what the summary says about the results (a dead model)
        "history": history,
    }


def _discard_logs_of_refused_run(trainer: L.Trainer) -> None:
    """A run refused while its data is read (before its first step) leaves no log files: Lightning opens
    the loggers' files before the data module's setup, where such a refusal happens."""
    record = find_callback(trainer, RunRecord)
    if record is None or record.first_step_at is not None or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        log_dir = Path(logger.log_dir) if getattr(logger, "log_dir", None) else None
        if log_dir is not None and log_dir.is_dir():
            if hasattr(logger, "finalize"):
                logger.finalize("failed")
            shutil.rmtree(log_dir, ignore_errors=True)


def _record_pruned(trainer: L.Trainer, run_dir: Path, seconds: float) -> dict[str, Any]:
    """pruned.json: the epochs a pruned trial ran, with the metric values it reported."""
    record = find_callback(trainer, RunRecord)
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
