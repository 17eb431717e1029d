"""Optuna searches over tinyvision configs: the search space (space.py), the study and its results
(study.py), and the sweep loop (runner.py) that the Hydra plugin in ``hydra_plugins/`` hands over to.
Only sweeps import this package (it needs optuna)."""

from tinyvision.search.space import check_settings, search_space, split_overrides, trial_overrides
from tinyvision.search.study import pruning_callback

__all__ = ["check_settings", "pruning_callback", "search_space", "split_overrides", "trial_overrides"]
