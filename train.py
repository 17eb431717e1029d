"""Train an image classifier: python train.py model=lenet data=fashion [key=value ...]."""

import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from tinyvision.errors import TinyVisionError
from tinyvision.summary import print_error, print_summary
from tinyvision.training import train


# Lightning 2.6 calls a torch API that torch 2.14 deprecates; the warning is Lightning's, not the user's.
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except TinyVisionError as error:
        print_error(error)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records the failed job and goes on with the others
        sys.exit(2)
    print_summary(metrics)
    return metrics["val/acc_best"]


if __name__ == "__main__":
    main()
