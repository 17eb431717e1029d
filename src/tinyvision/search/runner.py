"""The sweep that hparams_search runs (the Hydra plugin in hydra_plugins/ only hands over to it): ask, launch, tell.

Each round asks ``n_jobs`` trials, launches them as one batch of Hydra jobs through the configured launcher
(basic, joblib, submitit), and tells the study what each job returned. Jobs reach their trial through the
study's storage (an SQLite file in the sweep dir by default) to report each epoch and be pruned. Written here
because the released hydra-optuna-sweeper pins optuna<3 and can neither prune nor resume."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import statistics
import time
import zlib
from pathlib import Path
from typing import Any

import hydra.utils
import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from tinyvision.errors import ConfigError, TinyVisionError
from tinyvision.files import FAILURE_FILE, STUDY_FILE, write_json
from tinyvision.run_folders import exit_refused
from tinyvision.search import space as study_space
from tinyvision.search import study as study_tools

log = logging.getLogger(__name__)

# Overrides that may change between a sweep and its resumption without changing what is searched.
RESUMABLE_CHANGES = ("hparams_search.resume", "hparams_search.n_trials", "hparams_search.n_jobs", "hparams_search.shared",
                     "hparams_search.heartbeat_seconds", "hydra.")  # hydra.*: where and how this worker runs its jobs


class Study:
    """One sweep: the study it opens or resumes, the trials it launches, the results it writes."""

    def __init__(self, search: DictConfig, config: DictConfig, launcher) -> None:
        self.search, self.config, self.launcher = search, config, launcher

    def run(self, arguments: list[str]) -> optuna.Study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            return self._sweep(arguments)
        except TinyVisionError as error:
            exit_refused(error)  # the one line, and the sweep folder this command made removed

    def _sweep(self, arguments: list[str]) -> optuna.Study:
        search = OmegaConf.to_container(self.search, resolve=True)
        study_space.check_settings(search)
        search["prune_on"] = study_space.pruning_metric(search)
        fixed, command_space = study_space.split_overrides(arguments)
        space = {**study_space.search_space(search.get("params")), **command_space}
        if not space:
            raise ConfigError(
                "nothing to search: hparams_search.params is empty and the command gives no range. "
                f"Give one, e.g. 'optimizer.lr=tag(log, interval(1e-4, 1e-1))' (ranges: {study_space.SYNTAX})"
            )
        folds = search.get("folds")
        if folds:
            _check_folds(folds, fixed, space, self.config)
        sweep_dir = Path(self.config.hydra.sweep.dir).resolve()
        url = search.get("storage") or study_tools.default_storage(sweep_dir)
        study = self._open_study(search, sweep_dir, url, fixed, space)
        if not search.get("shared"):  # in a shared study a running trial may be another worker's, alive
            self._retry_interrupted(study, sweep_dir)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's own sweeper does

        n_trials = search["n_trials"]
        n_jobs = (os.cpu_count() or 1) if search["n_jobs"] == -1 else search["n_jobs"]
        # What every job gets besides its parameters: the pinned sweep dir (so jobs recomposed in another
        # process or on another machine land in it) and where its trial lives.
        set_here = ("hparams_search.resume", "hparams_search.storage", "hparams_search.study_name", "hparams_search.trial",
                    "hparams_search.prune_on")
        common = [o for o in fixed if _key(o) not in set_here]
        common += [
            f"hydra.sweep.dir={sweep_dir}",
            f"hparams_search.storage={study_space.quote(url)}",
            f"hparams_search.study_name={study_space.quote(study.study_name)}",
            # as resolved here: the jobs report it each epoch; a trial of folds is pruned here, between its folds
            f"hparams_search.prune_on={'null' if folds else study_space.quote(search['prune_on'])}",
        ]
        started = time.perf_counter()
        shared, beat = bool(search.get("shared")), float(search.get("heartbeat_seconds") or 10)
        while (done := len(study_tools.counted_trials(study))) < n_trials:
            if shared:
                for number in study_tools.fail_stale_trials(study, 4 * beat):
                    log.warning("trial %d: its worker stopped beating: marked failed, its parameters asked again", number)
                done = len(study_tools.live_trials(study))  # other workers' running trials will count too
                if done >= n_trials:  # wait for theirs: one may stop beating, and its trial is then ours to retry
                    time.sleep(beat)
                    continue
            batch = [study.ask(space) for _ in range(min(n_jobs, n_trials - done))]
            if shared:
                batch = self._within_n_trials(study, batch, n_trials)
            if folds:
                with study_tools.heartbeat(study, batch, beat) if shared else contextlib.nullcontext():
                    self._run_folds(study, batch, common, search, sweep_dir)
                continue
            for trial in batch:
                trial.set_user_attr("run_dir", str(sweep_dir / str(trial.number)))
            for run in _consecutive(batch):
                overrides = [common + study_space.trial_overrides(t.params) + [f"hparams_search.trial={t.number}"] for t in run]
                log.info("trials %s: %s", ", ".join(str(t.number) for t in run), [study_space.trial_overrides(t.params) for t in run])
                with study_tools.heartbeat(study, run, beat) if shared else contextlib.nullcontext():
                    returns = self.launcher.launch(overrides, initial_job_idx=run[0].number)
                for trial, result in zip(run, returns):
                    self._tell(study, trial, result, search["metric"])
        result = study_tools.write_results(study, sweep_dir, search["metric"], self._rerun_command(fixed))
        _print_result(result, sweep_dir, time.perf_counter() - started)
        return study

    def _open_study(self, search: dict, sweep_dir: Path, url: str, fixed: list[str], space: dict) -> optuna.Study:
        resume = search.get("resume")
        name = search.get("study_name") or self.config.hydra.runtime.choices.get("hparams_search") or "tinyvision"
        if resume:
            if not sweep_dir.is_dir():
                raise ConfigError(f"hparams_search.resume={resume} does not exist: give the folder of a sweep under outputs/multirun/")
        else:
            # The sweep's folder holds multirun.yaml and the jobs' folders whatever the storage: a folder given with
            # hydra.sweep.dir is not created by the command line's check (tinyvision.cli), and Hydra creates it later.
            sweep_dir.mkdir(parents=True, exist_ok=True)
        shared = bool(search.get("shared"))
        if url == study_tools.default_storage(sweep_dir) and not shared:
            if resume and not (sweep_dir / STUDY_FILE).is_file():
                raise ConfigError(
                    f"hparams_search.resume={resume} holds no {STUDY_FILE}: it is not the folder of an Optuna sweep"
                )
            if not resume and (sweep_dir / STUDY_FILE).is_file():
                raise ConfigError(
                    f"{sweep_dir} already holds a study ({STUDY_FILE}); it is kept as it is. "
                    f"Continue it with hparams_search.resume={sweep_dir}, or start a new sweep"
                )
        storage = study_tools.open_storage(url)
        options = dict(study_name=name, storage=storage, pruner=hydra.utils.instantiate(search.get("pruner")))
        searched = {key: optuna.distributions.distribution_to_json(d) for key, d in sorted(space.items())}
        kept = sorted(o for o in fixed if not _key(o).startswith(RESUMABLE_CHANGES))
        if shared and not resume and name in optuna.get_all_study_names(storage):
            return self._join(options, searched, kept, search, url)
        if resume:
            try:
                study = optuna.load_study(**options)
            except KeyError:
                raise ConfigError(f"hparams_search.resume={resume}: {url} holds no study named {name!r}") from None
            _refuse_other_search(study, f"hparams_search.resume={resume}", searched, kept, search)
            study.sampler = _sampler(search.get("sampler"), len(study.get_trials(deepcopy=False)), shared)
            _keep_previous(sweep_dir / "multirun.yaml")
            log.info("resuming study %r in %s: %d trials ended", name, sweep_dir, len(study_tools.counted_trials(study)))
            return study
        try:
            study = optuna.create_study(**options, direction=search["direction"], sampler=_sampler(search.get("sampler"), 0, shared))
        except optuna.exceptions.DuplicatedStudyError:
            if shared:  # another worker created it a moment ago
                return self._join(options, searched, kept, search, url)
            raise ConfigError(
                f"study {name!r} exists already in {url}: continue it with hparams_search.resume=<its sweep dir>, "
                "or give another hparams_search.study_name"
            ) from None
        study.set_user_attr("search_space", searched)
        study.set_user_attr("fixed_overrides", kept)
        study.set_user_attr("metric", search["metric"])
        for params in search.get("enqueue") or []:
            study.enqueue_trial(dict(params))
        return study

    @staticmethod
    def _join(options: dict, searched: dict, kept: list[str], search: dict, url: str) -> optuna.Study:
        """A worker of a shared study joins it as it is: the same search, its own sampler seed."""
        study = optuna.load_study(**options)
        _refuse_other_search(study, f"hparams_search.shared=true (study {options['study_name']!r} in {url})", searched, kept,
                             search)
        study.sampler = _sampler(search.get("sampler"), len(study.get_trials(deepcopy=False)), shared=True)
        log.info("joined study %r in %s: %d trials ended", options["study_name"], url, len(study_tools.counted_trials(study)))
        return study

    @staticmethod
    def _within_n_trials(study: optuna.Study, batch: list[optuna.Trial], n_trials: int) -> list[optuna.Trial]:
        """Of the trials this worker just asked, those within n_trials: two workers asking at the same moment can
        together ask more, and the later-numbered ones are told failed as surplus (not counted, not run)."""
        live = [t.number for t in study_tools.live_trials(study)]
        kept = []
        for trial in batch:
            if trial.number in live[:n_trials]:
                kept.append(trial)
                continue
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
        return kept

    def _retry_interrupted(self, study: optuna.Study, sweep_dir: Path) -> None:
        """Trials still running in the storage were cut off with the sweep: mark them failed and ask their
        parameters again first. Their folders stay as they were, with a note of what happened."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # Optuna's public API sets attributes only through a live Trial; the storage call is what it uses.
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            retry = study.get_trials(deepcopy=False)[-1].number
            for key, value in (("interrupted", True), ("retried_as", retry), ("error", "interrupted: the sweep stopped while it ran")):
                study._storage.set_trial_user_attr(trial._trial_id, key, value)
            study.tell(trial.number, state=TrialState.FAIL)
            run_dir = sweep_dir / str(trial.number)
            if run_dir.is_dir() and not (run_dir / "metrics.json").exists():
                write_json(run_dir / FAILURE_FILE, {"error": "interrupted: the sweep stopped while this trial ran; "
                                                             "its parameters were asked again when the sweep resumed"})
            log.warning("trial %d was running when the sweep stopped: marked failed, its parameters asked again", trial.number)

    def _run_folds(self, study: optuna.Study, batch: list[optuna.Trial], common: list[str], search: dict,
                   sweep_dir: Path) -> None:
        """Each trial of ``batch`` trains every fold of ``hparams_search.folds`` (data.folds=K, data.fold=0..K-1, in the
        job folders <trial>_fold<i>) and scores the mean of its folds' metric. Fold by fold, the batch's trials train
        together, and after each fold a trial reports the running mean (step: the fold) and stops if the pruner says."""
        folds = int(search["folds"])
        values: dict[int, list[float]] = {trial.number: [] for trial in batch}
        for trial in batch:
            trial.set_user_attr("run_dir", str(sweep_dir / f"{trial.number}_fold0"))
        training = list(batch)
        for fold in range(folds):
            if not training:  # every trial of the batch failed or was pruned
                break
            overrides = [common + study_space.trial_overrides(t.params)
                         + [f"hparams_search.trial={t.number}", f"data.folds={folds}", f"data.fold={fold}",
                            f"hydra.sweep.subdir={t.number}_fold{fold}"] for t in training]
            log.info("fold %d of %d, trials %s", fold, folds, ", ".join(str(t.number) for t in training))
            returns = self.launcher.launch(overrides, initial_job_idx=training[0].number * folds + fold)
            still = []
            for trial, result in zip(training, returns):
                try:
                    if self._fold_done(study, trial, fold, result, values[trial.number], search):
                        still.append(trial)
                except optuna.exceptions.UpdateFinishedTrialError:  # a shared study's other worker ended it meanwhile
                    self._still_open(study, trial)
            training = still
        for trial in training:
            fold_values = values[trial.number]
            trial.set_user_attr("fold_std", statistics.stdev(fold_values))
            try:
                study.tell(trial, statistics.fmean(fold_values))
            except optuna.exceptions.UpdateFinishedTrialError:
                self._still_open(study, trial)

    def _fold_done(self, study: optuna.Study, trial: optuna.Trial, fold: int, result: JobReturn, values: list[float],
                   search: dict) -> bool:
        """One fold's job of a trial: its value added to ``values``; whether the trial trains its next fold (not when
        the job failed, the pruner stopped it on its running mean, or another worker ended it)."""
        metric, folds = search["metric"], int(search["folds"])
        if not self._still_open(study, trial):
            return False
        value, error = _job_value(result, metric)
        if error is not None:
            trial.set_user_attr("error", f"fold {fold}: {error}")
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed in fold %d: %s", trial.number, fold, error)
            return False
        values.append(value)
        trial.set_user_attr("fold_values", values)
        running_mean = statistics.fmean(values)
        if search.get("prune_on") and fold < folds - 1:
            trial.report(running_mean, fold)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                log.info("trial %d pruned after fold %d: mean %s %.4f", trial.number, fold, metric, running_mean)
                return False
        return True

    def _still_open(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """Whether the trial is still running in the storage; a shared study's other worker may have ended it (this
        worker was silent too long), and this worker's figures then stay in its folders."""
        # Optuna's storage call: a Trial has no public state.
        if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            return True
        log.warning("trial %d was ended by another worker of the shared study while it ran (this worker was silent too "
                    "long: suspended or overloaded) and its parameters asked again there; this run's figures are in %s",
                    trial.number, trial.user_attrs.get("run_dir", "its folder"))
        return False

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: JobReturn, metric: str) -> None:
        try:
            if self._still_open(study, trial):
                self._tell_open_trial(study, trial, result, metric)
        except optuna.exceptions.UpdateFinishedTrialError:  # ended between that look and the tell
            self._still_open(study, trial)

    def _tell_open_trial(self, study: optuna.Study, trial: optuna.Trial, result: JobReturn, metric: str) -> None:
        outcome = _outcome(result, metric)
        if outcome.get("status") == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned after %s epochs", trial.number, outcome.get("epochs"))
            return
        value, error = _job_value(result, metric)
        if error is not None:
            trial.set_user_attr("error", error)
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, error)
            return
        study.tell(trial, value)

    def _rerun_command(self, fixed: list[str]) -> list[str]:
        """The overrides that train the best trial again as a single run (the search's own keys left out)."""
        command = [o for o in fixed if not _key(o).startswith("hparams_search")]
        experiment = self.config.hydra.runtime.choices.get("experiment")
        if experiment and not any(_key(o) == "experiment" for o in command):
            command.insert(0, f"experiment={experiment}")
        return command


def _outcome(result: JobReturn, metric: str) -> dict[str, Any]:
    """What a job returned, as the dict train() returns: its status, its metrics or its error."""
    if result.status == JobStatus.COMPLETED:
        outcome = result.return_value
        return outcome if isinstance(outcome, dict) else {"status": "done", metric: outcome}  # a bare metric
    error = result._return_value  # JobReturn.return_value re-raises a failed job's exception; this reads it
    return {"status": "failed", "error": f"{type(error).__name__}: {error}"}


def _job_value(result: JobReturn, metric: str) -> tuple[float | None, str | None]:
    """The job's finite ``metric``, or None and why there is none."""
    outcome = _outcome(result, metric)
    value = outcome.get(metric)
    if outcome.get("status") in ("failed", "pruned") or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, outcome.get("error") or f"the job returned no finite {metric} (got {value!r})"
    return float(value), None


def _check_folds(folds: int, fixed: list[str], space: dict, config: DictConfig) -> None:
    """hparams_search.folds trains every fold itself: the data must have folds, and the command must not pick them."""
    study_space.refuse_picked_folds(folds, [*fixed, *(f"{key}=" for key in space)])
    if "folds" not in (config.get("data") or {}):
        raise ConfigError(f"hparams_search.folds={folds}: data={config.hydra.runtime.choices.get('data')} has no folds "
                          "(data.folds is a key of the mnist-style and folder datasets): use one of those, or "
                          "hparams_search.folds=null")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _consecutive(trials: list[optuna.Trial]) -> list[list[optuna.Trial]]:
    """Trials in runs of consecutive numbers: a launch numbers its jobs from its first one, so each job's
    folder is named after its trial."""
    runs: list[list[optuna.Trial]] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if runs and runs[-1][-1].number + 1 == trial.number:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


def _refuse_other_search(study: optuna.Study, joining: str, searched: dict, kept: list[str], search: dict) -> None:
    before = study.user_attrs
    differences = []
    if before.get("search_space") != searched:
        differences.append(f"search space {sorted(before.get('search_space', {}))} -> {sorted(searched)}"
                            if set(before.get("search_space", {})) != set(searched) else "the ranges of the search space")
    previous = before.get("fixed_overrides", [])
    if previous != kept:
        gone, added = [o for o in previous if o not in kept], [o for o in kept if o not in previous]
        differences.append(f"overrides {' '.join(gone) or '(none)'} -> {' '.join(added) or '(none)'}")
    if before.get("metric") != search["metric"]:
        differences.append(f"hparams_search.metric {before.get('metric')} -> {search['metric']}")
    if differences:
        raise ConfigError(
            f"{joining}: the study was searched with other settings than this command: {'; '.join(differences)}. "
            "Resume or join it with the command that started it (hparams_search.n_trials may change), or start a new study"
        )


def _sampler(config: dict | None, trials_so_far: int, shared: bool = False) -> optuna.samplers.BaseSampler | None:
    """The sampler; a resumed study's seed is offset by its trials, or it would draw the first session's points again,
    and a shared study's worker's by its process too, or workers starting together would all draw the same points."""
    if config and config.get("seed") is not None:
        worker = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) if shared else 0
        config = {**config, "seed": (int(config["seed"]) + trials_so_far + worker) % 2**32}
    return hydra.utils.instantiate(config)


def _keep_previous(path: Path) -> None:
    """Keep the multirun.yaml of the session that is resumed; the resumed one writes its own."""
    if path.is_file():
        path.replace(path.with_name(f"multirun_{time.strftime('%Y-%m-%d_%H-%M-%S')}.yaml"))


def _print_result(result: dict[str, Any], sweep_dir: Path, seconds: float) -> None:
    from rich.console import Console

    console = Console()
    counts = ", ".join(f"{n} {state}" for state, n in result["trials"].items())
    best = result["best"]
    if best is None:
        console.print(f"[bold red]study {result['study_name']}: no trial completed[/] ({counts}); see {sweep_dir / 'study.yaml'}")
        return
    params = " ".join(best["overrides"])
    console.print(
        f"[bold]best trial {best['trial']}[/]: {best['metric']}={best['value']:.4f} with {params}\n"
        f"  trials: {counts}; {seconds:.1f} s this session\n"
        f"  best.yaml, study.yaml and plots in {sweep_dir}\n  train it again: {best['command']}",
        highlight=False,
    )
