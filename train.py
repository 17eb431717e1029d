"""Train an image classifier: python train.py model=lenet data=fashion [key=value ...]."""

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from tinyvision.errors import TinyVisionError
from tinyvision.summary import print_error, print_summary
from tinyvision.sweep import FAILURE_FILE
from tinyvision.training import config_for_resume, train, write_json

# Lightning 2.6 calls a torch API that torch 2.14 deprecates; the warning is Lightning's, not the user's.
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
log = logging.getLogger("tinyvision")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if cfg.get("resume"):
            cfg = config_for_resume(cfg, list(HydraConfig.get().overrides.task))
        metrics = train(cfg)
    except TinyVisionError as error:
        print_error(error)
        if not multirun:
            sys.exit(2)
        return record_failure(cfg, error)
    except Exception as error:
        if not multirun:
            raise
        log.exception("job failed")
        return record_failure(cfg, error)
    print_summary(metrics)
    return metrics["val/acc_best"]


def record_failure(cfg: DictConfig, error: Exception) -> None:
    """In a sweep a failed job is recorded in its folder and the others go on; the summary lists it."""
    message = str(error) if isinstance(error, TinyVisionError) else f"{type(error).__name__}: {error}"
    write_json(Path(cfg.paths.output_dir) / FAILURE_FILE, {"error": message})


if __name__ == "__main__":
    main()
