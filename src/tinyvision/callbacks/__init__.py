"""The callbacks a run is made of, one job a module (conf/callbacks/default.yaml configures them):

- checkpoints.py: ``LastCheckpoint`` (last.ckpt every N steps and every epoch), ``ResumableRandomState``
- loss_check.py: ``StopOnNonFiniteLoss``, the stop on a NaN or infinite loss (and the bar's cheap loss read)
- stop_on_signal.py: ``StopOnSignal`` and ``RunInterrupted``: SIGTERM, SIGINT and SLURM's warning
- progress.py: the Rich ``ProgressBar``, drawn ten times a second
- record.py: ``RunRecord``, the per-epoch history and timings of metrics.json, and the at-chance warning
- test_report.py: ``TestReport``, the final test's per-class report and PR curves
- ema.py: ``EMA`` with its warm-up (``exponential_moving_average`` builds it, or none at decay 0)
- pictures.py: ``TensorBoardPictures`` and ``RunPictures`` (results.png, confusion_matrix.png in the run folder)
- hyperparameters.py: ``LogHyperparameters`` and ``RememberLoggerRuns``, what the loggers get beside metrics
- lightning_settings.py: the settings checked of Lightning's ModelCheckpoint and EarlyStopping
- fit_checks.py: ``FitChecks``, settings only the data's size can refuse, checked before the first step
- share_cores.py: ``ShareCores``, PyTorch's threads set to this run's share of the cores other runs train on too
"""

from tinyvision.callbacks.checkpoints import LastCheckpoint, ResumableRandomState
from tinyvision.callbacks.ema import EMA, WarmedUpDecay, exponential_moving_average
from tinyvision.callbacks.fit_checks import FitChecks
from tinyvision.callbacks.hyperparameters import LogHyperparameters, RememberLoggerRuns
from tinyvision.callbacks.lightning_settings import LIGHTNING_CALLBACK_SETTINGS, MonitorSettings
from tinyvision.callbacks.lookup import find_callback
from tinyvision.callbacks.loss_check import StopOnNonFiniteLoss
from tinyvision.callbacks.pictures import RunPictures, TensorBoardPictures
from tinyvision.callbacks.progress import ProgressBar
from tinyvision.callbacks.record import RunRecord, chance_warning
from tinyvision.callbacks.share_cores import ShareCores
from tinyvision.callbacks.stop_on_signal import RunInterrupted, StopOnSignal
from tinyvision.callbacks.test_report import TestReport

__all__ = ["EMA", "LIGHTNING_CALLBACK_SETTINGS", "FitChecks", "LastCheckpoint", "LogHyperparameters", "MonitorSettings", "ProgressBar",
           "RememberLoggerRuns", "ResumableRandomState", "RunInterrupted", "RunPictures", "RunRecord", "ShareCores",
           "StopOnNonFiniteLoss", "StopOnSignal", "TensorBoardPictures", "TestReport", "WarmedUpDecay", "chance_warning",
           "exponential_moving_average", "find_callback"]
