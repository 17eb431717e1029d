"""What the loggers are given beside the metrics: the run's curated hyperparameters, and the MLflow and W&B runs' ids."""

from __future__ import annotations

import lightning as L

from tinyvision.loggers import MLFLOW_RUN_KEY, WANDB_RUN_KEY, log_compared_hparams


class LogHyperparameters(L.Callback):
    """Gives the loggers the run's curated hyperparameters when fit starts, after the data module's setup: a
    run refused while its data is read (a validation split larger than the data) leaves no events behind."""

    def __init__(self, params: dict):
        self.params = params

    def on_fit_start(self, trainer, pl_module) -> None:
        # A resumed run's TensorBoard folder has its entry from the start; other loggers begin a new record.
        log_compared_hparams(trainer, self.params, resumed=trainer.ckpt_path is not None)


class RememberLoggerRuns(L.Callback):
    """Keeps the MLflow run's id and the W&B run's id in each checkpoint, so that resume=<run dir> logs on into the
    same MLflow run and W&B run (training._loggers reads them back) instead of starting a second one.

    Every run carries this callback (tinyvision.training adds it), so it carries tinyvision.callbacks.FitChecks too:
    the settings only the data's size can refuse are refused when fit sets up, before the first step."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger) and logger.run_id:
                checkpoint[MLFLOW_RUN_KEY] = logger.run_id
            if isinstance(logger, WandbLogger) and logger.version:  # version: the run's id, without starting a run
                checkpoint[WANDB_RUN_KEY] = logger.version
