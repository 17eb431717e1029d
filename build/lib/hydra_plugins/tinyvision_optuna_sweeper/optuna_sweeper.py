"""The Hydra sweeper: ``hydra/sweeper=optuna`` (conf/hydra/sweeper/optuna.yaml) names this class.

Hydra imports every module of its plugin packages at each start: this one stays thin, and the sweep
(tinyvision.search, which needs optuna and Lightning) is imported only when a sweep runs."""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(self, search: DictConfig) -> None:
        self.search = search  # the hparams_search node
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> Any:
        from tinyvision.search.runner import Study

        return Study(self.search, self.config, self.launcher).run(arguments)
