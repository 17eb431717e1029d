"""Optuna studies over tinyvision configs.

The study side (search space, storage, results) is used by the Hydra sweeper in
``hydra_plugins/tinyvision_optuna_sweeper``; the trial side (``pruning_callback``) by each sweep job, which
may run in another process or on another machine and reaches the study through its storage."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra.utils
import optuna
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import OverrideParseException
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tinyvision.errors import ConfigError
from tinyvision.files import write_atomic
from tinyvision.sweep import STUDY_RESULT

STUDY_FILE = "optuna.db"
BEST_FILE = "best.yaml"
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
METRICS = ("val/acc_best", "val/acc", "val/loss", "test/acc", "test/loss")  # what a run's metrics.json holds
PRUNE_ON = ("val/acc", "val/loss", None)  # logged every validation epoch; None: no reports, no pruning
SYNTAX = "choice(a, b), interval(low, high), tag(log, interval(low, high)), int(interval(low, high)) or range(low, high, step)"


def split_overrides(arguments: list[str]) -> tuple[list[str], dict[str, BaseDistribution]]:
    """Command-line overrides split into fixed ones (passed to every trial) and searched ones."""
    fixed, space = [], {}
    for override in _parse(arguments, "the command line"):
        if override.is_sweep_override():
            space[override.get_key_element()] = _distribution(override)
        else:
            fixed.append(override.input_line)
    return fixed, space


def search_space(params: Mapping[str, str] | None) -> dict[str, BaseDistribution]:
    """``hparams_search.params`` ({key: sweep syntax}) as Optuna distributions."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()]
    space = {}
    for override in _parse(lines, "hparams_search.params"):
        if not override.is_sweep_override():
            raise ConfigError(
                f"hparams_search.params: {override.input_line} is not a range to search: write {SYNTAX}, "
                f"or set a fixed value in the experiment or on the command line"
            )
        space[override.get_key_element()] = _distribution(override)
    return space


def _parse(lines: list[str], where: str) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(lines)
    except OverrideParseException as error:
        raise ConfigError(f"{where}: {error}. Search ranges are written {SYNTAX}") from None


def _distribution(override: Override) -> BaseDistribution:
    sweep = override.value()
    key = override.get_key_element()
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high:
            raise ConfigError(f"{key}: interval({low}, {high}) is empty: the low end must be below the high end")
        log = "log" in sweep.tags
        if log and low <= 0:
            raise ConfigError(f"{key}: a log-scale interval must start above 0, not at {low}")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if not values:
            raise ConfigError(f"{key}: range({sweep.start}, {sweep.stop}, {sweep.step}) holds no value")
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return IntDistribution(values[0], values[-1], step=sweep.step)
        return CategoricalDistribution(values)
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(sweep.list))
    raise ConfigError(f"{override.input_line}: {type(sweep).__name__} is not a search range; write {SYNTAX}")


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    """A trial's parameters as Hydra overrides (``optimizer.lr=0.0123``, ``optimizer=sgd``)."""
    return [f"{key}={quote(value)}" for key, value in params.items()]


def quote(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return text if re.fullmatch(r"[\w./:@+-]+", text) else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's storage for a database URL; SQLite waits for a lock instead of failing when jobs write at once."""
    if url.startswith("sqlite:"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"


def check_settings(search: Mapping[str, Any]) -> None:
    """Refuse settings that would spend a whole study for nothing: an unknown metric (every trial would
    fail after training), a pruning metric that goes the other way than the study (pruning would keep
    the worst trials), no trials."""
    direction = search.get("direction")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"hparams_search.direction={direction}: maximize or minimize, e.g. hparams_search.direction=maximize")
    for key, allowed in (("metric", METRICS), ("prune_on", PRUNE_ON)):
        value = search.get(key)
        if value not in allowed:
            raise ConfigError(f"hparams_search.{key}={value}: one of {', '.join(map(str, allowed))}, "
                              f"e.g. hparams_search.{key}={allowed[0]}")
        if value and ("loss" in value) == (direction == "maximize"):
            raise ConfigError(
                f"hparams_search.{key}={value} goes the other way than hparams_search.direction={direction}: "
                f"use val/acc or val/acc_best when maximizing accuracy, val/loss when minimizing a loss"
            )
    for key, least in (("n_trials", 1), ("n_jobs", -1)):
        value = search.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least or value == 0:
            raise ConfigError(f"hparams_search.{key}={value}: a whole number, 1 or more"
                              + (" (or -1: one per CPU core)" if key == "n_jobs" else "") + f", e.g. hparams_search.{key}=4")


# ---------------------------------------------------------------------------------------------- trial side


def pruning_callback(search: DictConfig):
    """The Lightning callback a sweep job uses to report ``prune_on`` each epoch and stop when the pruner says.

    Optuna-integration's callback does the reporting (and the DDP hand-over through the storage); this
    only reconnects the job to its trial, which the sweeper created with ``study.ask()``."""
    from optuna_integration import PyTorchLightningPruningCallback

    study = optuna.load_study(
        study_name=search.study_name, storage=open_storage(search.storage), pruner=hydra.utils.instantiate(search.get("pruner"))
    )
    try:
        # Optuna has no public lookup of a trial by number; the storage method is the one its own trials use.
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(search.trial))
    except KeyError:
        raise ConfigError(
            f"hparams_search.trial={search.trial}: study {search.study_name!r} in {search.storage} has no such trial; "
            "trials are created by the sweeper (python train.py -m hparams_search=...), not by hand"
        ) from None
    return PyTorchLightningPruningCallback(optuna.trial.Trial(study, trial_id), monitor=search.prune_on)


# ---------------------------------------------------------------------------------------------- results


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that ran to an end of their own: complete, pruned, or failed by their own error. Trials
    interrupted by a crash of the sweep are not counted: they are asked again when the sweep resumes."""
    return [t for t in study.get_trials(deepcopy=False, states=ENDED) if not t.user_attrs.get("interrupted")]


def write_results(study: optuna.Study, sweep_dir: Path, metric: str, command: list[str]) -> dict[str, Any]:
    """best.yaml, study.yaml and Optuna's plots in the sweep dir; returns what study.yaml holds."""
    trials = study.get_trials(deepcopy=False)
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        trial = study.best_trial
        overrides = trial_overrides(trial.params)
        best = {
            "metric": metric,
            "direction": study.direction.name.lower(),
            "value": trial.value,
            "trial": trial.number,
            "params": dict(trial.params),
            "overrides": overrides,
            "run_dir": trial.user_attrs.get("run_dir"),
            "command": " ".join(["python train.py", *command, *overrides]),
        }
        _write_yaml(sweep_dir / BEST_FILE, best)
    study_record = {
        "study_name": study.study_name,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "trials": {state: count for state, count in states.items() if count},
        "best": best,
        "plots": _plot(study, sweep_dir),
        "trial_list": [_trial_record(t) for t in trials],
    }
    _write_yaml(sweep_dir / STUDY_RESULT, study_record)
    return study_record


def _trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    record = {"number": trial.number, "state": trial.state.name.lower(), "params": dict(trial.params)}
    if trial.value is not None:
        record["value"] = trial.value
    if trial.intermediate_values:
        record["epochs"] = len(trial.intermediate_values)
    record.update({key: trial.user_attrs[key] for key in ("error", "run_dir", "retried_as", "retry_of") if key in trial.user_attrs})
    return record


def _write_yaml(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, yaml.safe_dump(_plain(payload), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _plot(study: optuna.Study, sweep_dir: Path) -> dict[str, str]:
    """Optuna's optimization history, parameter importances and intermediate values (epochs of each
    trial, pruned ones included) as PNG; a plot that cannot be drawn yet is skipped with its reason."""
    import logging
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    written = {}
    for name, draw, needs in (
        ("optimization_history", plots.plot_optimization_history, 1),
        ("param_importances", plots.plot_param_importances, 2),
        ("intermediate_values", plots.plot_intermediate_values, 1),
    ):
        if len(complete) < needs or (name == "param_importances" and not _varied(complete)):
            written[name] = f"not drawn: needs {needs} complete trials with varied parameters"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = draw(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(sweep_dir / f"{name}.png", dpi=110)
            plt.close(figure)
            written[name] = f"{name}.png"
        except (ValueError, RuntimeError) as error:
            logging.getLogger(__name__).warning("Optuna plot %s not drawn: %s", name, error)
            written[name] = f"not drawn: {error}"
    return written


def _varied(trials: list[optuna.trial.FrozenTrial]) -> bool:
    return any(len({repr(t.params.get(key)) for t in trials}) > 1 for key in trials[0].params) if trials else False
