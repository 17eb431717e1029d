"""Train an image classifier: python train.py model=lenet data=fashion [key=value ...]."""

import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from tinyvision.cli import run_script
from tinyvision.console import report
from tinyvision.errors import ConfigError, TinyVisionError
from tinyvision.files import FAILURE_FILE, METRICS_FILE, PRUNED_FILE, write_json

log = logging.getLogger("tinyvision")


def main(cfg: DictConfig) -> dict:
    # Imported once the command line has been checked (run_script): a typo or --help is answered before torch and
    # Lightning load, in a fraction of their import time (BENCHMARKS.md).
    from tinyvision.callbacks import RunInterrupted
    from tinyvision.checkpoints import config_for_resume
    from tinyvision.summary import print_summary
    from tinyvision.training import train

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if cfg.get("hparams_search") is not None and not multirun:
            choice = HydraConfig.get().runtime.choices.get("hparams_search")
            raise ConfigError(
                f"hparams_search={choice} runs an Optuna study of many runs: add -m (python train.py -m "
                f"hparams_search={choice}); to train once with a study's best parameters, use the command in its best.yaml"
            )
        if cfg.get("resume"):
            cfg = config_for_resume(cfg, list(HydraConfig.get().overrides.task))
        metrics = train(cfg, sweep_job=multirun)
    except RunInterrupted as stop:
        exit_interrupted(cfg, stop)
    except TinyVisionError as error:
        if not multirun:
            raise  # one line and exit status 2 (run_script)
        report(error)
        return record_failure(cfg, error)
    except Exception as error:
        if not multirun:
            raise
        log.exception("job failed")
        return record_failure(cfg, error)
    if metrics.get("status") == "pruned":
        log.info("pruned after %d epochs (best val acc %s): %s", metrics["epochs"], metrics["val/acc_best"], metrics["run_dir"])
    else:
        print_summary(metrics)
    # What a sweeper reads: the Optuna sweeper optimizes one of these metrics; Hydra's basic one ignores it.
    return {"status": "done", **{key: value for key, value in metrics.items() if key != "history"}}


def exit_interrupted(cfg: DictConfig, stop) -> None:
    """One line saying where the run stopped and how to go on, then the signal's exit status (143, 130)."""
    run_dir = Path(cfg.paths.output_dir)
    if stop.requeued:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        where = f"the sweep in {run_dir.parent}" if multirun else str(run_dir)
        log.warning("stopped by %s after SLURM's warning of the job's end; %s holds the step reached: SLURM job %s is "
                    "requeued and its next start continues %s", stop, stop.checkpoint, stop.requeued, where)
    elif stop.checkpoint is not None:
        log.warning("stopped by %s; %s holds the step reached: resume with  python train.py resume=%s",
                    stop, stop.checkpoint, run_dir)
    else:
        log.warning("stopped by %s before the run's first checkpoint: no checkpoint was written in %s, start the run "
                    "anew", stop, run_dir)
    sys.exit(stop.exit_status)


def record_failure(cfg: DictConfig, error: Exception) -> dict[str, str]:
    """In a sweep a failed job is recorded in its folder and the others go on; the summary lists it."""
    message = str(error) if isinstance(error, TinyVisionError) else f"{type(error).__name__}: {error}"
    run_dir = Path(cfg.paths.output_dir)
    if not (run_dir / METRICS_FILE).exists() and not (run_dir / PRUNED_FILE).exists():  # never over another run's record
        write_json(run_dir / FAILURE_FILE, {"error": message})
    return {"status": "failed", "error": message}


if __name__ == "__main__":
    run_script("train", main)
