"""What goes to the run loggers (TensorBoard, CSV, MLflow, W&B) beyond the per-epoch metrics Lightning sends:
the curated hyperparameters, the run's final figures, and for MLflow the run's files as artifacts; W&B offline
unless asked otherwise."""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from pydantic import Field, field_validator, model_validator
from torch.utils.tensorboard.summary import hparams

from tinyvision.errors import ConfigError
from tinyvision.files import METRICS_FILE
from tinyvision.hparams import HEADLINE, RESULT_METRICS
from tinyvision.schema import ConfigValueError, Open, spec


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger without its extra ``epoch`` scalar (Lightning adds the epoch to every
    logged row for loggers that plot against steps, which in TensorBoard is a chart of a straight line), and
    with the model graph traced once: Lightning asks for it at the start of fit and again of the test."""

    _graph_logged = False

    def __init__(self, *args, purge_step: int | None = None, **kwargs):
        super().__init__(*args, purge_step=purge_step, **kwargs)
        self.resumed = purge_step is not None  # a resumed run's folder: its events after the checkpoint are purged

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics({key: value for key, value in metrics.items() if key != "epoch"}, step)

    def log_graph(self, model, input_array=None) -> None:
        if self._graph_logged or self.resumed:  # a resumed run's folder has its graph
            return
        self._graph_logged = True
        # TensorBoard's graph goes through torch.jit.trace, which warns that it is deprecated; the warning
        # is not the user's to act on, and the graph is still right.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*")
            super().log_graph(model, input_array)


def tensorboard_writer(trainer: L.Trainer):
    """The run's TensorBoard SummaryWriter (its first TensorBoard logger's), or None when it logs to no TensorBoard."""
    return next((logger.experiment for logger in trainer.loggers if isinstance(logger, LightningTensorBoardLogger)), None)


MLFLOW_RUN_KEY = "mlflow_run_id"  # in every checkpoint of a run logged to MLflow
WANDB_RUN_KEY = "wandb_run_id"  # in every checkpoint of a run logged to W&B


def wandb_mode(offline: bool | None) -> str | None:
    """The mode W&B runs in: ``logger.wandb.offline`` when set; else WANDB_MODE, left to wandb itself (None);
    else offline, so that a run never needs an account or the network unless someone asked for it."""
    if offline is not None:
        return "offline" if offline else "online"
    return None if os.environ.get("WANDB_MODE") else "offline"


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, offline unless ``offline=false`` or WANDB_MODE says otherwise (``wandb_mode``),
    that starts a W&B run of its own and ends it with the tinyvision run.

    The mode goes to wandb.init as ``mode``, not as Lightning's ``offline``: Lightning sets WANDB_MODE in the
    process's environment for that, which would make every later run of the process (a sweep's next job, the
    Python API) offline too. Lightning reuses any W&B run still open in the process (and never ends its own): a
    sweep's jobs would all log into the first job's run."""

    def __init__(self, *args, offline: bool | None = None, **kwargs):
        self._offline_setting = offline  # named in the error line when wandb refuses to start the run
        mode = wandb_mode(offline)
        if mode is not None:
            kwargs.setdefault("mode", mode)
        super().__init__(*args, offline=False, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # Lightning always passes it; wandb 0.31 warns it has no effect
            del self._wandb_init["anonymous"]

    @property
    def experiment(self):
        if self._experiment is None and self.__dict__.get("_attach_id") is None:
            import wandb

            if wandb.run is not None:  # an earlier run of this process left open (a job that ended by an exception)
                wandb.run.finish(exit_code=1)
            try:
                return super().experiment
            except wandb.errors.UsageError as error:  # online without an account: "No API key configured. ..."
                asked = f"logger.wandb.offline={str(self._offline_setting).lower()}" if self._offline_setting is not None \
                    else f"WANDB_MODE={os.environ.get('WANDB_MODE')}"
                raise ConfigError(f"{asked}: wandb refused to start the run ({str(error).splitlines()[0]}): run wandb login "
                                  "(or set WANDB_API_KEY), or log offline (logger.wandb.offline=true) and upload later "
                                  "with wandb sync") from None
        return super().experiment

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status != "success" and self._experiment is not None:  # fit or test ended by an exception or a signal
            self.finish(exit_code=1)

    def finish(self, exit_code: int = 0) -> None:
        """End the W&B run: its files are complete (an offline run is then ready for wandb sync)."""
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=exit_code)


def log_compared_hparams(trainer: L.Trainer, params: dict[str, Any], resumed: bool = False) -> None:
    """Give every logger the curated hyperparameters (tinyvision.hparams); a resumed run's TensorBoard
    folder and MLflow run already hold them."""
    from lightning.pytorch.loggers import MLFlowLogger

    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if resumed and isinstance(logger, (LightningTensorBoardLogger, MLFlowLogger)):
            continue
        if isinstance(logger, LightningTensorBoardLogger):
            # Not logger.log_hyperparams(params, metrics): it also logs the metrics' placeholder values as
            # scalars, which would stay in the run's curves. This writes the HPARAMS entry alone, naming the
            # result metrics whose scalars HPARAMS shows beside the parameters.
            # SummaryWriter writes a raw summary only through its file writer, which it has no public getter for
            # (tests/test_compare_runs.py reads the HPARAMS entry back, so a change in torch fails there).
            writer = logger.experiment._get_file_writer()
            experiment, session_start, session_end = hparams(params, dict.fromkeys(RESULT_METRICS, 0.0))
            for summary in (_headline_first(experiment), session_start, session_end):
                writer.add_summary(summary)
        else:
            logger.log_hyperparams(params)


def _headline_first(experiment):
    """The HPARAMS experiment summary with the headline settings marked as the ones that differ between runs:
    TensorBoard orders columns by that mark, then by name, and shows the first five, which would otherwise
    be the alphabetical first (augment/*, data/channels) rather than what people compare."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    value = experiment.value[0]
    content = HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in content.experiment.hparam_infos:
        info.differs = info.name in HEADLINE
    value.metadata.plugin_data.content = content.SerializeToString()
    return experiment


def log_final_figures(trainer: L.Trainer, train_seconds: float, epochs: int) -> None:
    """run/train_seconds and run/epochs for every logger, after fit (the final test logs test/*)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics({"run/train_seconds": train_seconds, "run/epochs": epochs}, step=trainer.global_step)
        logger.save()


def log_run_files(trainer: L.Trainer, run_dir: Path, best_checkpoint: str | None) -> None:
    """At the end of a finished run: MLflow keeps the run's files as artifacts (metrics.json, per_class.csv, the
    config and best.ckpt), and a W&B run ends, with exit code 0 (its files are then complete)."""
    if not trainer.is_global_zero:
        return
    from lightning.pytorch.loggers import MLFlowLogger

    files = [run_dir / METRICS_FILE, run_dir / "per_class.csv", run_dir / ".hydra" / "config.yaml"]
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.finish()
        if not isinstance(logger, MLFlowLogger):
            continue
        for path in files:
            if path.is_file():
                logger.experiment.log_artifact(logger.run_id, str(path))
        if best_checkpoint and Path(best_checkpoint).is_file():
            logger.experiment.log_artifact(logger.run_id, best_checkpoint, artifact_path="checkpoints")


MLFLOW_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


class MLflowSettings(Open):
    """``logger.mlflow``: what Lightning's MLFlowLogger takes and fails on only when it first logs."""

    experiment_name: str = spec("a name", "tinyvision", "tinyvision")
    tracking_uri: str | None = spec(f"a tracking URI ({', '.join(s + ':' for s in MLFLOW_SCHEMES)}) or null",
                                    "sqlite:///outputs/mlflow.db", None)
    artifact_location: str | None = spec("null or a directory or URI", "outputs/mlartifacts", None)
    run_name: str | None = spec("null (the run dir's name) or a name", "my_run", None)
    log_model: bool | Literal["all"] = spec("true, false or all", False, False)

    @field_validator("tracking_uri")
    @classmethod
    def _scheme(cls, value):
        scheme = value.split(":", 1)[0] if value and "://" in value else None
        if scheme is not None and scheme.split("+")[0] not in MLFLOW_SCHEMES:
            raise ValueError("")
        return value


# W&B project names may not hold these (wandb refuses them when the run starts, or when it is synced)
WANDB_PROJECT_FORBIDDEN = ("/", "\\", "#", "?", "%", ":")


class WandbSettings(Open):
    """``logger.wandb``: tinyvision's WandbLogger; other keys go to wandb.init (entity, group, job_type, notes, ...)."""

    project: str = spec("a W&B project name (no / \\ # ? % :, at most 128 characters)", "tinyvision", "tinyvision")
    offline: bool | None = spec("null (WANDB_MODE decides, offline when it is unset), true or false (online: needs wandb login)",
                                True, None)
    save_dir: str = spec("a folder (wandb/ is made in it)", "outputs/wandb", ".")
    name: str | None = spec("null (the run dir's name) or a name", "my_run", None)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = spec("a list of tags, each 1 to 64 characters",
                                                                          "[baseline,lenet]", [])
    log_model: bool | Literal["all"] = spec("true, false or all (checkpoints uploaded to W&B: online only)", False, False)

    @field_validator("project")
    @classmethod
    def _project(cls, value):
        if not value or len(value) > 128 or any(c in value for c in WANDB_PROJECT_FORBIDDEN):
            raise ValueError("")
        return value

    @model_validator(mode="after")
    def _model_upload_needs_online(self):
        mode = wandb_mode(self.offline) or os.environ.get("WANDB_MODE")
        if self.log_model and mode in ("offline", "dryrun"):
            raise ConfigValueError("log_model", self.log_model, "false while W&B logs offline (it uploads checkpoints only "
                                   "online: logger.wandb.offline=false)", False)
        return self


# Lightning's loggers that tinyvision checks, and tinyvision's own
LOGGER_SETTINGS = {"lightning.pytorch.loggers.MLFlowLogger": MLflowSettings, "tinyvision.loggers.WandbLogger": WandbSettings}
# The optional extra each logger needs (pyproject.toml): without it Lightning raises at the run's start, in a traceback
LOGGER_EXTRAS = {"lightning.pytorch.loggers.MLFlowLogger": "mlflow", "tinyvision.loggers.WandbLogger": "wandb"}


def refuse_missing_logger_package(name: str, target: Any) -> None:
    """``logger=NAME`` whose package is not installed: one line naming the extra that installs it."""
    extra = LOGGER_EXTRAS.get(target) if isinstance(target, str) else None
    if extra is not None and not _installed(extra):
        raise ConfigError(f"logger={name}: needs the {extra} package, not installed here: pip install 'tinyvision[{extra}]' "
                          "(or choose another logger, e.g. logger=tensorboard)")


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (how tests hide one), or one without a spec
        return False
