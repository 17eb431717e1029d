"""A Hydra sweeper that runs an Optuna study (current Optuna, pruning, resumable); see optuna_sweeper.py.

``hydra_plugins`` is Hydra's namespace for plugins: Hydra finds this package there, so
``hydra/sweeper=optuna`` (conf/hydra/sweeper/optuna.yaml) can name the class below."""
