"""What goes to the run loggers (TensorBoard, CSV, MLflow) beyond the per-epoch metrics Lightning sends:
the curated hyperparameters, the run's final figures, and for MLflow the run's files as artifacts."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from pydantic import field_validator
from torch.utils.tensorboard.summary import hparams

from tinyvision.files import METRICS_FILE
from tinyvision.hparams import HEADLINE, RESULT_METRICS
from tinyvision.schema import Open, spec


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
    """MLflow keeps the run's files as artifacts: metrics.json, per_class.csv, the config and best.ckpt."""
    if not trainer.is_global_zero:
        return
    from lightning.pytorch.loggers import MLFlowLogger

    files = [run_dir / METRICS_FILE, run_dir / "per_class.csv", run_dir / ".hydra" / "config.yaml"]
    for logger in trainer.loggers:
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


LOGGER_SETTINGS = {"lightning.pytorch.loggers.MLFlowLogger": MLflowSettings}  # Lightning's loggers that tinyvision checks
