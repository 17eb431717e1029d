"""The study itself: its storage, the pruning callback a trial's run reports through, and the results
(best.yaml, study.yaml, plots) written when a sweep ends. A trial's job may run in another process or on
another machine and reaches the study through the storage."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra.utils
import optuna
import yaml
from optuna.trial import TrialState

from tinyvision import boundaries
from tinyvision.errors import ConfigError
from tinyvision.files import BEST_FILE, STUDY_FILE, STUDY_RESULT, write_atomic
from tinyvision.search.space import trial_overrides

ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def open_storage(url: str, key: str = "hparams_search.storage") -> optuna.storages.BaseStorage:
    """Optuna's storage for a database URL; SQLite waits for a lock instead of failing when jobs write at once. A URL
    SQLAlchemy cannot use, a database server that does not answer, or a SQLite file whose folder cannot be made is one
    line (SQLite cannot create a missing folder: it is created here)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    example = f"{key}=sqlite:///outputs/study.db"
    problem = boundaries.database_url_problem(url)
    if problem is not None:
        raise ConfigError(f"{key}={url}: {problem}, e.g. {example}")
    parsed = make_url(url)
    if parsed.host:  # a database server: a short connection first, not the driver's long timeout
        default_port = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}.get(parsed.get_backend_name(), 5432)
        answer = boundaries.answer_problem(f"tcp://{parsed.host}:{parsed.port or default_port}")
        if answer is not None:
            raise ConfigError(f"{key}={url}: the database server does not answer ({answer}): start it, or use a "
                              f"file every job can reach, e.g. {example}")
    boundaries.sqlite_parent(key, url, create=True)
    try:
        if url.startswith("sqlite:"):
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        return optuna.storages.RDBStorage(url)
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise ConfigError(f"{key}={url}: the database cannot be opened ({reason}), e.g. {example}") from None


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"


def pruning_callback(search: Mapping[str, Any]):
    """The Lightning callback a sweep job uses to report ``prune_on`` each epoch and stop when the pruner says.

    Optuna-integration's callback does the reporting (and the DDP hand-over through the storage); this
    only reconnects the job to its trial, which the sweeper created with ``study.ask()``."""
    from optuna_integration import PyTorchLightningPruningCallback

    study = optuna.load_study(
        study_name=search['study_name'], storage=open_storage(search['storage']), pruner=hydra.utils.instantiate(search.get("pruner"))
    )
    try:
        # Optuna has no public lookup of a trial by number; the storage method is the one its own trials use.
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(search['trial']))
    except KeyError:
        raise ConfigError(
            f"hparams_search['trial']={search['trial']}: study {search['study_name']!r} in {search['storage']} has no such trial; "
            "trials are created by the sweeper (python train.py -m hparams_search=...), not by hand"
        ) from None
    return PyTorchLightningPruningCallback(optuna.trial.Trial(study, trial_id), monitor=search['prune_on'])


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
