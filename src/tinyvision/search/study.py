"""The study itself: its storage, the pruning callback a trial's run reports through, and the results
(best.yaml, study.yaml, plots) written when a sweep ends. A trial's job may run in another process or on
another machine and reaches the study through the storage."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hydra.utils
import optuna
import yaml
from optuna.trial import TrialState

from tinyvision import boundaries
from tinyvision.errors import ConfigError
from tinyvision.files import BEST_FILE, STUDY_FILE, STUDY_RESULT, save_figure, write_atomic
from tinyvision.search.space import trial_overrides

log = logging.getLogger(__name__)
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# hparams_search.storage=journal:<file>: Optuna's journal file, for several workers on a shared file system without a
# database server (a database URL otherwise: sqlite:///..., postgresql://...).
JOURNAL = "journal:"
HEARTBEAT_ATTR = "tinyvision:heartbeat"  # a running trial's last sign of life from its worker (Unix time)


def open_storage(url: str, key: str = "hparams_search.storage") -> optuna.storages.BaseStorage:
    """Optuna's storage for a database URL; SQLite waits for a lock instead of failing when jobs write at once. A URL
    SQLAlchemy cannot use, a database server that does not answer, or a SQLite file whose folder cannot be made is one
    line (SQLite cannot create a missing folder: it is created here)."""
    from sqlalchemy.exc import SQLAlchemyError

    example = f"{key}=sqlite:///outputs/study.db"
    if url.startswith(JOURNAL):
        return _journal(url, key)
    problem = boundaries.database_url_problem(url)
    if problem is not None:
        raise ConfigError(f"{key}={url}: {problem}, e.g. {example}")
    answer = boundaries.database_server_problem(url)  # a short connection first, not the driver's long timeout
    if answer is not None:
        raise ConfigError(f"{key}={url}: the database server does not answer ({answer}): start it, or use a "
                          f"file every job can reach, e.g. {example}")
    boundaries.sqlite_parent(key, url, create=True)
    options = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite:") else {}
    try:
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url, **options)
            except SQLAlchemyError as error:
                # Workers starting at once on a new database all create Optuna's tables; all but one lose that race
                # (PostgreSQL: a duplicate key in pg_type). The tables are there once the winner is done: open again.
                reason = str(getattr(error, "orig", None) or error)
                if attempt == 4 or not ("duplicate key" in reason or "already exists" in reason):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise ConfigError(f"{key}={url}: the database cannot be opened ({reason}), e.g. {example}") from None


def _journal(url: str, key: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    path = Path(url[len(JOURNAL):]).expanduser()
    example = f"{key}={JOURNAL}outputs/study.journal"
    if not url[len(JOURNAL):] or path.is_dir():
        raise ConfigError(f"{key}={url}: name the journal file, e.g. {example}")
    boundaries.output_folder(key, path.parent, shown=url, example=f"{JOURNAL}outputs/study.journal")
    if path.is_file():
        _cut_the_unfinished_record(path)
    if path.is_file() and path.stat().st_size and not _looks_like_a_journal(path):
        raise ConfigError(f"{key}={url}: {path} is not an Optuna journal (its lines are not Optuna's JSON records); "
                          f"name a new file, e.g. {example}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except OSError as error:
        raise ConfigError(f"{key}={url}: the journal cannot be opened ({error.strerror or error}), e.g. {example}") from None
    except Exception as error:  # a file that is not a journal (Optuna replays it when it opens it)
        raise ConfigError(f"{key}={url}: {path} is not an Optuna journal ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:160] if str(error) else ''}); name a new file, e.g. {example}") from None


def _cut_the_unfinished_record(path: Path) -> None:
    """A worker killed while appending leaves its last record without its newline: the records before it are the
    study's finished work, so the cut record is moved aside (``<file>.cut``, for a look) and the study goes on, instead
    of the whole journal being refused."""
    import json

    with open(path, "rb") as handle:
        data = handle.read()
    if not data or data.endswith(b"\n"):
        return
    kept = data.rfind(b"\n") + 1
    try:  # only a journal's records before the cut: any other file is left as it is (and refused as no journal)
        if not kept or not data[kept:].startswith(b"{") or "op_code" not in json.loads(data[:data.find(b"\n")]):
            return
    except (ValueError, TypeError):
        return
    with open(path.with_name(path.name + ".cut"), "ab") as aside:
        aside.write(data[kept:] + b"\n")
    with open(path, "r+b") as handle:
        handle.truncate(kept)
    log.warning("%s ended in a record cut mid-write (a worker stopped while writing): it is moved to %s.cut and the "
                "study goes on from the %d records before it", path, path.name, data[:kept].count(b"\n"))


def _looks_like_a_journal(path: Path) -> bool:
    """Optuna's journal is JSON records a line, each ending in a newline; Optuna replays anything else as a record
    still being written, and its next write then fails with an assertion."""
    import json

    with path.open("rb") as handle:
        first = handle.readline()
        handle.seek(-1, 2)
        ends_whole = handle.read(1) == b"\n"
    try:
        return ends_whole and "op_code" in json.loads(first)
    except (ValueError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------- shared studies
# Several sweep processes (on several machines) asking trials of one study: each trial's worker writes a heartbeat
# into it while the trial runs, and a trial whose heartbeat stopped (its worker was killed) is failed and its
# parameters asked again, by whichever worker sees it first. Optuna has this (RDBStorage's heartbeat_interval) only
# inside study.optimize and not for its journal storage; the sweep asks and tells itself (tinyvision.search.runner),
# so it beats itself, through a trial system attribute, which every storage keeps.


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trials: list[optuna.Trial], seconds: float) -> Iterator[None]:
    """While the block runs, every ``seconds`` record that this worker is alive for each of ``trials``."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial in trials:
                with contextlib.suppress(Exception):  # a trial told meanwhile (finished) takes no more beats
                    study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time())
            if stop.wait(seconds):
                return

    beat_once = threading.Thread(target=beat, name="tinyvision-heartbeat", daemon=True)
    beat_once.start()
    try:
        yield
    finally:
        stop.set()
        beat_once.join()


def fail_stale_trials(study: optuna.Study, grace_seconds: float) -> list[int]:
    """Running trials whose worker has not beaten for ``grace_seconds``: failed, marked interrupted (not counted
    against n_trials) and their parameters enqueued again (Optuna's RetryHeartbeatStaleTrialCallback), at most
    twice for one original trial. Returns the numbers of the trials failed."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    failed, now = [], time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.system_attrs.get(HEARTBEAT_ATTR, trial.datetime_start.timestamp() if trial.datetime_start else now)
        if now - last < grace_seconds:
            continue
        try:  # a finished trial takes no more attributes: they are written while it still runs
            for key, value in (("interrupted", True),
                               ("error", f"interrupted: its worker stopped beating for {grace_seconds:.0f} s")):
                study._storage.set_trial_user_attr(trial._trial_id, key, value)
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first, or it ended meanwhile
            continue
        # The retry (its system attribute failed_trial names this one) from the snapshot taken before the attributes.
        RetryHeartbeatStaleTrialCallback(max_retry=2)(study, trial)
        failed.append(trial.number)
    return failed


def live_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count or will: ended of their own (``counted_trials``) or running; in the order they were asked."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return sorted(counted_trials(study) + [t for t in running if not t.user_attrs.get("surplus")], key=lambda t: t.number)


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

    class ReportWhileOpen(PyTorchLightningPruningCallback):
        """In a shared study a worker that was only slow (suspended, overloaded) may find its trial failed as silent by
        another worker, which asked its parameters again: the run then trains to its end without reporting, and its
        figures stay in its own folder."""

        closed = False

        def on_validation_end(self, trainer, pl_module) -> None:
            if self.closed:
                return
            try:
                super().on_validation_end(trainer, pl_module)
            except optuna.exceptions.UpdateFinishedTrialError:
                self.closed = True
                log.warning("trial %s was ended by another worker of the shared study (it found it silent): this run "
                            "trains on without reporting to it", search["trial"])

    return ReportWhileOpen(optuna.trial.Trial(study, trial_id), monitor=search['prune_on'])


# ---------------------------------------------------------------------------------------------- results


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that ran to an end of their own: complete, pruned, or failed by their own error. Trials
    interrupted by a crash of the sweep are not counted: they are asked again when the sweep resumes (or, in a shared
    study, by another worker); nor are trials a worker asked beyond n_trials while another worker asked too."""
    return [t for t in study.get_trials(deepcopy=False, states=ENDED)
            if not t.user_attrs.get("interrupted") and not t.user_attrs.get("surplus")]


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
    if trial.intermediate_values and "fold_values" not in trial.user_attrs:  # a trial of folds reports once a fold
        record["epochs"] = len(trial.intermediate_values)
    record.update({key: trial.user_attrs[key] for key in ("error", "run_dir", "retried_as", "retry_of", "fold_values", "fold_std")
                   if key in trial.user_attrs})
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
            save_figure(figure, sweep_dir / f"{name}.png")
            plt.close(figure)
            written[name] = f"{name}.png"
        except (ValueError, RuntimeError) as error:
            logging.getLogger(__name__).warning("Optuna plot %s not drawn: %s", name, error)
            written[name] = f"not drawn: {error}"
    return written


def _varied(trials: list[optuna.trial.FrozenTrial]) -> bool:
    return any(len({repr(t.params.get(key)) for t in trials}) > 1 for key in trials[0].params) if trials else False
