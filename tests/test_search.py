"""Optuna sweeps as a user runs them: a study, pruning, a crash and its resumption, parallel trials, failures."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import ROOT
from tinyvision.errors import ConfigError
from tinyvision.search import check_settings, search_space, split_overrides, trial_overrides

pytestmark = pytest.mark.slow  # trains runs in subprocesses: make test-fast leaves these out

SEEDS = ["lenet_fashion", "convnet_mnist", "mlp_mnist", "cifar_net", "cifar_net_v3", "vgg16_cifar10"]
# Trials of a ConvNet on the synthetic stroke shapes: learnable in an epoch or two, about a second each.
TRIAL = ["model=convnet", "data=mnist", "data.batch_size=32", "data.val_size=100", "callbacks=minimal", "logger=none"]
LR = "optimizer.lr=tag(log, interval(0.001, 0.01))"


def sweep(*args: str, fault: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    prefix = ["tests/faults.py", fault[0], str(fault[1])] if fault else []
    return subprocess.run([sys.executable, *prefix, "train.py", "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def trials(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="optuna", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def test_search_space_is_written_in_hydra_sweep_syntax():
    space = search_space({
        "optimizer.lr": "tag(log, interval(1e-4, 1e-1))",
        "model.width": "int(interval(8, 64))",
        "optimizer": "choice(adam, sgd)",
        "data.batch_size": "range(32, 257, 32)",
    })
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert space["model.width"] == IntDistribution(8, 64)
    assert space["optimizer"] == CategoricalDistribution(["adam", "sgd"])
    assert space["data.batch_size"] == IntDistribution(32, 256, step=32)
    fixed, from_command = split_overrides(["hparams_search=optuna", "model=convnet", "optimizer.momentum=0.5,0.9"])
    assert fixed == ["hparams_search=optuna", "model=convnet"]
    assert from_command == {"optimizer.momentum": CategoricalDistribution([0.5, 0.9])}
    assert trial_overrides({"optimizer.lr": 1e-05, "optimizer": "sgd", "model.freeze_features": True, "data.root": "a b"}) == [
        "optimizer.lr=1e-05", "optimizer=sgd", "model.freeze_features=true", "data.root='a b'"]


@pytest.mark.parametrize(("params", "message"), [
    ({"optimizer.lr": "0.1"}, "optimizer.lr=0.1 is not a range to search"),
    ({"optimizer.lr": "interval(0.1, 0.01)"}, "interval(0.1, 0.01) is empty"),
    ({"optimizer.lr": "tag(log, interval(0, 1))"}, "must start above 0"),
    ({"optimizer.lr": "interval(0.1"}, "hparams_search.params"),
])
def test_a_search_space_that_cannot_work_is_refused_naming_it(params, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        search_space(params)


@pytest.mark.parametrize(("change", "message"), [
    ({"metric": "val/accuracy"}, "hparams_search.metric=val/accuracy: val/acc_best, val/acc, val/loss, test/acc or test/loss"),
    ({"prune_on": "val/acc_best"}, "hparams_search.prune_on=val/acc_best: auto, val/acc, val/loss"),
    ({"direction": "minimize"}, "hparams_search.metric=val/acc_best: it goes the other way than hparams_search.direction=minimize"),
    ({"metric": "val/loss", "direction": "minimize", "prune_on": "val/acc"}, "hparams_search.prune_on=val/acc: it goes the other way"),
    ({"direction": "up"}, "hparams_search.direction=up: maximize or minimize, e.g. hparams_search.direction=maximize"),
    ({"n_trials": 0}, "hparams_search.n_trials=0: a whole number, 1 or more, e.g. hparams_search.n_trials=4"),
    ({"n_jobs": 0}, "hparams_search.n_jobs=0: a whole number, 1 or more (-1: one per CPU core)"),
])
def test_study_settings_that_would_waste_the_study_are_refused(make_config, change, message):
    search = {**OmegaConf.to_container(make_config("hparams_search=lenet_fashion").hparams_search, resolve=True), "n_jobs": 1}
    check_settings(search)  # the shipped settings pass
    with pytest.raises(ConfigError) as refused:
        check_settings({**search, **change})
    assert message in str(refused.value)


@pytest.mark.parametrize("name", SEEDS)
def test_every_seed_search_composes_and_tries_the_seed_recipe_first(make_config, name):
    cfg = make_config(f"hparams_search={name}")
    assert cfg.hparams_search.params and cfg.hparams_search.direction == "maximize"
    space = search_space(cfg.hparams_search.params)
    recipe = dict(cfg.hparams_search.enqueue[0])
    assert set(recipe) == set(space)
    for key, value in recipe.items():  # the recipe lies inside the space
        distribution = space[key]
        if isinstance(distribution, CategoricalDistribution):
            inside = value in distribution.choices
        else:
            inside = distribution.low <= value <= distribution.high
        assert inside, (key, value, distribution)
    experiment = make_config(f"experiment={name}")
    assert cfg.model == experiment.model and cfg.optimizer == experiment.optimizer  # the search starts from the experiment


@pytest.mark.parametrize("choice", ["hparams_search/pruner=median", "hparams_search/pruner=halving", "hparams_search/pruner=none",
                                    "hparams_search/sampler=tpe", "hparams_search/sampler=random"])
def test_every_pruner_and_sampler_option_builds(make_config, choice):
    cfg = make_config("hparams_search=lenet_fashion", choice)
    pruner, sampler = instantiate(cfg.hparams_search.pruner), instantiate(cfg.hparams_search.sampler)
    group, name = choice.split("/")[1].split("=")
    built = {"median": "MedianPruner", "halving": "SuccessiveHalvingPruner", "none": "NopPruner", "tpe": "TPESampler",
             "random": "RandomSampler"}[name]
    assert type(pruner if group == "pruner" else sampler).__name__ == built


def test_slurm_launcher_runs_one_task_per_device():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=cifar_net_v3", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 1)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")


def test_search_needs_multirun(shapes_root, tmp_path):
    result = subprocess.run([sys.executable, "train.py", "hparams_search=lenet_fashion", f"paths.data_dir={shapes_root}",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "add -m (python train.py -m hparams_search=lenet_fashion)" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def study_of_4(shapes_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    sweep_dir = tmp_path_factory.mktemp("search") / "study"
    result = sweep("hparams_search=optuna", LR, *TRIAL, "trainer.max_epochs=2", "hparams_search.n_trials=4",
                   f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep_dir, result


def test_a_study_of_4_trials_writes_the_best_trial(study_of_4):
    sweep_dir, result = study_of_4
    ended = trials(sweep_dir)
    assert [t.state for t in ended] == [TrialState.COMPLETE] * 4
    assert all(0.001 <= t.params["optimizer.lr"] <= 0.01 for t in ended)
    assert len({t.params["optimizer.lr"] for t in ended}) == 4
    values = {}
    for trial in ended:  # each trial's value is what its own run wrote, and its run dir is named after it
        metrics = json.loads((sweep_dir / str(trial.number) / "metrics.json").read_text())
        assert trial.value == metrics["val/acc_best"] and len(trial.intermediate_values) == 2
        job_config = yaml.safe_load((sweep_dir / str(trial.number) / ".hydra" / "config.yaml").read_text())
        assert job_config["hparams_search"]["trial"] == trial.number
        values[trial.number] = trial.value
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["value"] == max(values.values()) and values[best["trial"]] == best["value"]
    assert best["overrides"] == [f"optimizer.lr={best['params']['optimizer.lr']!r}"]
    assert best["command"].startswith("python train.py model=convnet") and "hparams_search" not in best["command"]
    assert f"best trial {best['trial']}" in result.stdout
    for plot in ("optimization_history.png", "param_importances.png", "intermediate_values.png"):
        assert (sweep_dir / plot).stat().st_size > 1000
    assert yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hparams_search"]["n_trials"] == 4
    summary = (sweep_dir / "summary.md").read_text()
    assert "Optuna study `optuna`: maximize val/acc_best; trials: 4 complete." in summary and "(best.yaml)" in summary


def test_the_best_command_trains_the_best_trial_again(study_of_4, shapes_root, tmp_path):
    sweep_dir, _ = study_of_4
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    args = best["command"].split()[2:]
    result = subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={tmp_path / 'again'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["val/acc_best"] == pytest.approx(best["value"], abs=1e-6)


def test_the_pruner_stops_a_bad_trial_and_its_run_dir_says_so(shapes_root, tmp_path):
    sweep_dir = tmp_path / "pruned"
    result = sweep(
        "hparams_search=optuna", "optimizer.lr=choice(0.003, 1e-7)", *TRIAL, "trainer.max_epochs=3", "hparams_search.n_trials=3",
        "hparams_search.enqueue=[{optimizer.lr: 0.003}, {optimizer.lr: 0.003}, {optimizer.lr: 1e-7}]",
        "hparams_search.pruner.n_startup_trials=2", "hparams_search.pruner.n_warmup_steps=0",
        f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    good, also_good, bad = trials(sweep_dir)
    assert (good.state, also_good.state, bad.state) == (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED)
    assert bad.params == {"optimizer.lr": 1e-7} and len(bad.intermediate_values) < 3
    pruned = json.loads((sweep_dir / "2" / "pruned.json").read_text())
    assert pruned["status"] == "pruned" and pruned["epochs"] == len(bad.intermediate_values)
    assert pruned["val/acc"] == pytest.approx(bad.intermediate_values[pruned["epochs"] - 1])
    assert not (sweep_dir / "2" / "metrics.json").exists()
    assert "pruned after epoch" in (sweep_dir / "summary.md").read_text()


def test_a_study_of_folds_scores_each_trial_by_its_folds_mean_and_prunes_on_the_running_mean(shapes_root, tmp_path):
    """hparams_search.folds=3: every trial trains data.fold=0, 1, 2 of data.folds=3 (folders <trial>_fold<i>); its value
    is the mean of its folds' own metrics.json; after each fold but the last it reports the running mean, and the
    pruner stops the bad trial after its first fold."""
    sweep_dir = tmp_path / "folds"
    result = sweep(
        "hparams_search=optuna", "optimizer.lr=choice(0.003, 1e-7)", *TRIAL, "trainer.max_epochs=1", "hparams_search.n_trials=3",
        "hparams_search.folds=3", "hparams_search.enqueue=[{optimizer.lr: 0.003}, {optimizer.lr: 0.003}, {optimizer.lr: 1e-7}]",
        "hparams_search.pruner.n_startup_trials=2", "hparams_search.pruner.n_warmup_steps=0",
        f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    *good, bad = trials(sweep_dir)
    assert [t.state for t in good] == [TrialState.COMPLETE] * 2 and bad.state == TrialState.PRUNED
    for trial in good:
        values = []
        for fold in range(3):
            job = sweep_dir / f"{trial.number}_fold{fold}"
            data = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["data"]
            assert (data["folds"], data["fold"]) == (3, fold)
            values.append(json.loads((job / "metrics.json").read_text())["val/acc_best"])
        assert trial.value == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert trial.user_attrs["fold_values"] == values
        assert trial.user_attrs["fold_std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert trial.intermediate_values == pytest.approx({0: values[0], 1: statistics.fmean(values[:2])})
    assert list(bad.intermediate_values) == [0]  # pruned on its first fold: the other two never trained
    assert (sweep_dir / f"{bad.number}_fold0" / "metrics.json").is_file()
    assert not (sweep_dir / f"{bad.number}_fold1").exists()
    record = yaml.safe_load((sweep_dir / "study.yaml").read_text())
    assert record["trial_list"][0]["fold_values"] == good[0].user_attrs["fold_values"]
    summary = (sweep_dir / "summary.md").read_text()
    scores = " ".join(f"{v:.4f}" for v in good[0].user_attrs["fold_values"])
    assert f"| 0 | complete | `optimizer.lr=0.003` | {scores} | {good[0].value:.4f} ± " in summary
    assert f"| {bad.number} | pruned | `optimizer.lr=1e-07` | {bad.user_attrs['fold_values'][0]:.4f} | {bad.value:.4f} |" in summary


@pytest.mark.parametrize(("overrides", "message"), [
    (["hparams_search.folds=3", "data.fold=1"], "hparams_search.folds=3 trains every fold of each trial (data.folds=3, "
                                                 "data.fold=0 to 2): leave data.fold out of the command"),
    (["hparams_search.folds=3", "data.folds=5", "data.fold=range(5)"], "leave data.folds and data.fold out of the command"),
    (["hparams_search.folds=1"], "hparams_search.folds=1: null or a whole number of folds, 2 or more"),
])
def test_a_study_of_folds_that_cannot_work_is_one_line_before_any_trial(overrides, message, shapes_root, tmp_path):
    result = sweep("hparams_search=optuna", LR, *TRIAL, *overrides, f"paths.data_dir={shapes_root}",
                   f"hydra.sweep.dir={tmp_path / 'refused'}")
    assert result.returncode == 2 and message in result.stderr, result.stderr[-3000:]
    assert not list((tmp_path / "refused").glob("*/.hydra"))


def test_a_study_killed_after_2_trials_resumes_to_the_requested_total(shapes_root, tmp_path):
    sweep_dir = tmp_path / "killed"
    args = ["hparams_search=optuna", LR, *TRIAL, "trainer.max_epochs=1", "hparams_search.n_trials=4", f"paths.data_dir={shapes_root}"]
    killed = sweep(*args, f"hydra.sweep.dir={sweep_dir}", fault=("kill-in-trial", 2))
    assert killed.returncode == -9
    before = trials(sweep_dir)
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    finished = {n: (sweep_dir / str(n) / "metrics.json").read_bytes() for n in (0, 1)}

    # Resuming with another search space is refused and changes nothing.
    other = sweep(*args[:1], "optimizer.lr=tag(log, interval(0.001, 0.1))", *args[2:], f"hparams_search.resume={sweep_dir}")
    assert other.returncode == 2 and "was searched with other settings than this command" in other.stderr
    assert [t.state for t in trials(sweep_dir)] == [t.state for t in before]

    resumed = sweep(*args, f"hparams_search.resume={sweep_dir}")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = trials(sweep_dir)
    states = [t.state for t in after]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    interrupted, retry = after[2], after[3]
    assert interrupted.user_attrs["interrupted"] and interrupted.user_attrs["retried_as"] == 3
    assert retry.params == interrupted.params and retry.user_attrs["retry_of"] == 2
    for number, contents in finished.items():  # finished trials were not run again
        assert (sweep_dir / str(number) / "metrics.json").read_bytes() == contents
    assert "interrupted" in json.loads((sweep_dir / "2" / "failure.json").read_text())["error"]
    assert yaml.safe_load((sweep_dir / "study.yaml").read_text())["trials"] == {"complete": 4, "fail": 1}
    assert len({t.params["optimizer.lr"] for t in after}) == 4  # the resumed sampler did not replay the first draws
    assert len(list(sweep_dir.glob("multirun_*.yaml"))) == 1 and (sweep_dir / "multirun.yaml").is_file()  # both sessions' configs


def test_joblib_runs_two_trials_at_once(shapes_root, tmp_path):
    sweep_dir = tmp_path / "parallel"
    result = sweep("hparams_search=optuna", LR, *TRIAL, "trainer.max_epochs=3", "hparams_search.n_trials=2",
                   "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first, second = (json.loads((sweep_dir / n / "metrics.json").read_text()) for n in ("0", "1"))
    assert first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"]  # they overlap
    assert all(len(t.intermediate_values) == 3 for t in trials(sweep_dir))  # both reported to the study from their process


def test_submitit_local_runs_trials_as_separate_jobs(shapes_root, tmp_path):
    sweep_dir = tmp_path / "submitit"
    result = sweep("hparams_search=optuna", LR, *TRIAL, "trainer.max_epochs=2", "hparams_search.n_trials=2", "hparams_search.n_jobs=2",
                   "hydra/launcher=submitit_local", f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [t.state for t in trials(sweep_dir)] == [TrialState.COMPLETE] * 2
    assert all(len(t.intermediate_values) == 2 for t in trials(sweep_dir))
    assert list((sweep_dir / ".submitit").iterdir())  # submitit's own job folders
    assert (sweep_dir / "best.yaml").is_file()


def test_a_failing_trial_is_recorded_with_its_error_and_the_study_goes_on(shapes_root, tmp_path):
    sweep_dir = tmp_path / "failing"
    result = sweep(
        "hparams_search=optuna", "optimizer=sgd", "optimizer.lr=choice(0.01, 1e9)", *TRIAL, "trainer.max_epochs=1",
        "hparams_search.n_trials=3", "hparams_search.enqueue=[{optimizer.lr: 1e9}, {optimizer.lr: 0.01}, {optimizer.lr: 0.01}]",
        f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]  # a study fails only when no trial completes
    diverged, *rest = trials(sweep_dir)
    assert diverged.state == TrialState.FAIL and "the training loss became nan" in diverged.user_attrs["error"]
    assert [t.state for t in rest] == [TrialState.COMPLETE] * 2
    assert "the training loss became nan" in json.loads((sweep_dir / "0" / "failure.json").read_text())["error"]
    assert yaml.safe_load((sweep_dir / "best.yaml").read_text())["trial"] in (1, 2)


def test_ddp_inside_a_multirun_is_refused_with_the_way_out(shapes_root, tmp_path):
    sweep_dir = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "train.py", "-m", *TRIAL, "trainer=ddp", "trainer.accelerator=cpu", "trainer.max_epochs=1",
                             f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep_dir}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    error = json.loads((sweep_dir / "0" / "failure.json").read_text())["error"]
    assert "trainer.strategy=ddp with 2 devices cannot run inside a multirun" in error
    assert "hydra/launcher=joblib" in error and "hydra/launcher=slurm" in error
    assert not (sweep_dir / "0" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------- the sweep loop, without training


class FinishedJobs:
    """A launcher that trains nothing: every job returns the same metrics at once; the overrides it was given are kept."""

    def __init__(self) -> None:
        self.launched: list[list[str]] = []

    def launch(self, job_overrides, initial_job_idx: int):
        from hydra.core.utils import JobReturn, JobStatus

        self.launched += [list(o) for o in job_overrides]
        return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED,
                          _return_value={"status": "done", "val/acc_best": 0.5, "val/loss": 1.0}) for o in job_overrides]


def run_study(sweep_dir: Path, *arguments: str) -> FinishedJobs:
    """The Optuna sweeper's loop (tinyvision.search.runner) on this command line, with FinishedJobs as its launcher."""
    from tinyvision.search.runner import Study

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = compose("train", overrides=[*arguments, f"hydra.sweep.dir={sweep_dir}"], return_hydra_config=True)
    launcher = FinishedJobs()
    Study(config.hparams_search, config, launcher).run(list(arguments))
    return launcher


def test_a_storage_url_with_a_sweep_folder_not_made_yet_runs(tmp_path):
    """hydra.sweep.dir given on the command line is not created before the sweep: the study's own storage elsewhere used
    to leave it missing, and multirun.yaml could not be written (FileNotFoundError)."""
    sweep_dir, storage = tmp_path / "not" / "made" / "yet", tmp_path / "studies" / "deeper" / "study.db"  # neither exists
    run_study(sweep_dir, "hparams_search=lenet_fashion", "hparams_search.n_trials=2", f"hparams_search.storage=sqlite:///{storage}")
    assert (sweep_dir / "multirun.yaml").is_file() and (sweep_dir / "best.yaml").is_file()
    assert storage.is_file()  # SQLite's folder was made for it
    assert not (sweep_dir / "optuna.db").exists()


def test_pruning_follows_a_minimized_loss_unless_prune_on_is_given(tmp_path):
    launcher = run_study(tmp_path / "loss", "hparams_search=lenet_fashion", "hparams_search.n_trials=1", "hparams_search.metric=val/loss",
                         "hparams_search.direction=minimize")
    assert "hparams_search.prune_on=val/loss" in launcher.launched[0]  # the jobs report what the study minimizes
    launcher = run_study(tmp_path / "none", "hparams_search=lenet_fashion", "hparams_search.n_trials=1", "hparams_search.metric=val/loss",
                         "hparams_search.direction=minimize", "hparams_search.prune_on=null")
    assert "hparams_search.prune_on=null" in launcher.launched[0]  # given: kept
    with pytest.raises(SystemExit) as refused:  # given the wrong way: still refused, in one line
        run_study(tmp_path / "wrong", "hparams_search=lenet_fashion", "hparams_search.metric=val/loss",
                  "hparams_search.direction=minimize", "hparams_search.prune_on=val/acc")
    assert refused.value.code == 2


def test_a_sweep_whose_jobs_all_failed_names_only_the_files_it_wrote(tmp_path, capsys):
    from tinyvision.sweep import SweepSummary

    for job in ("0", "1"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- trainer=ddp\n- seed={job}\n")
        (tmp_path / job / "failure.json").write_text(json.dumps({"error": "trainer.strategy=ddp ... cannot run inside a multirun"}))
    (tmp_path / "summary.png").write_bytes(b"a picture of an earlier session")
    with pytest.raises(SystemExit):  # every job failed: exit status 1
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("summary:"))
    assert line == f"summary: {tmp_path / 'summary.md'}, {tmp_path / 'summary.csv'}"
    assert not (tmp_path / "summary.png").exists()


# ---------------------------------------------------------------------------------------------- shared studies
# Several sweep processes on one study, as on several machines (hparams_search.shared=true): through Optuna's journal
# file (a shared file system) and a PostgreSQL server started for the tests (tests/conftest.py, postgres_url).
STORAGES = ["journal", "postgresql"]


def shared_storage(kind: str, request, tmp_path: Path) -> str:
    return f"journal:{tmp_path / 'shared' / 'study.journal'}" if kind == "journal" else request.getfixturevalue("postgres_url")


def shared_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    from tinyvision.search.study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)


@pytest.mark.parametrize("kind", STORAGES)
def test_two_workers_of_a_shared_study_run_n_trials_between_them_each_once(kind, request, shapes_root, tmp_path):
    url, name, sweep_dir = shared_storage(kind, request, tmp_path), f"two_workers_{kind}", tmp_path / "sweep"
    args = [sys.executable, "train.py", "-m", "hparams_search=optuna", LR, *TRIAL, "trainer.max_epochs=1",
            "hparams_search.n_trials=4", "hparams_search.shared=true", "hparams_search.heartbeat_seconds=1",
            f"hparams_search.storage={url}", f"hparams_search.study_name={name}", f"paths.data_dir={shapes_root}",
            f"hydra.sweep.dir={sweep_dir}"]
    workers = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, out[-2000:] + err[-3000:]
    every = shared_trials(url, name)
    counted = [t for t in every if t.state == TrialState.COMPLETE]
    assert len(counted) == 4, [(t.number, t.state, t.user_attrs) for t in every]
    assert all(t.user_attrs.get("surplus") for t in every if t.state != TrialState.COMPLETE)  # asked at once, not run
    # each trial ran once, in its own folder, and the workers' first trials differ (their samplers are their own)
    assert all((sweep_dir / str(t.number) / "metrics.json").is_file() for t in counted)
    assert not any((sweep_dir / str(t.number)).exists() for t in every if t.state != TrialState.COMPLETE)
    assert len({t.params["optimizer.lr"] for t in counted}) == 4


@pytest.mark.parametrize("kind", STORAGES)
def test_a_killed_worker_leaves_its_trial_failed_and_another_worker_retries_it(kind, request, shapes_root, tmp_path):
    url, name, sweep_dir = shared_storage(kind, request, tmp_path), f"killed_worker_{kind}", tmp_path / "sweep"
    args = ["hparams_search=optuna", LR, *TRIAL, "trainer.max_epochs=1", "hparams_search.n_trials=3",
            "hparams_search.shared=true", "hparams_search.heartbeat_seconds=1", f"hparams_search.storage={url}",
            f"hparams_search.study_name={name}", f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep_dir}"]
    killed = sweep(*args, fault=("kill-in-trial", 1))  # SIGKILL mid-trial 1: no tell, no more heartbeats
    assert killed.returncode == -9
    before = shared_trials(url, name)
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]

    other = sweep(*args)  # another worker, later: it fails the silent trial, asks its parameters again, and finishes
    assert other.returncode == 0, other.stdout[-2000:] + other.stderr[-3000:]
    after = {t.number: t for t in shared_trials(url, name)}
    assert after[1].state == TrialState.FAIL and after[1].user_attrs["interrupted"]
    retries = [t for t in after.values() if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == before[1].params
    assert after[0].state == TrialState.COMPLETE and after[0].value == before[0].value  # kept as it was
    assert sum(t.state == TrialState.COMPLETE for t in after.values()) == 3  # n_trials across both workers
    assert "its worker stopped beating" in other.stderr + other.stdout


def test_a_worker_with_another_search_is_refused_joining(shapes_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = [*TRIAL, "trainer.max_epochs=1", "hparams_search.n_trials=1", "hparams_search.shared=true",
              f"hparams_search.storage={storage}", f"paths.data_dir={shapes_root}"]
    first = sweep("hparams_search=optuna", LR, *common, f"hydra.sweep.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr[-3000:]
    other = sweep("hparams_search=optuna", "optimizer.lr=tag(log, interval(0.01, 0.1))", *common,
                  f"hydra.sweep.dir={tmp_path / 'b'}")
    assert other.returncode == 2
    assert "hparams_search.shared=true (study 'optuna' in " in other.stderr
    assert "the study was searched with other settings than this command" in other.stderr


# ---------------------------------------------------------------------------------------------- through sbatch
# hydra/launcher=slurm on the one-node cluster of tools/slurm_cluster.sh (the slurm_cluster fixture): each job a
# SLURM job, asked for what this 2-core machine has (the launcher's own defaults ask for 8 CPUs, 32 GB and a GPU).
ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.gpus_per_node=null", "hydra.launcher.timeout_min=10"]


def figures(sweep_dir: Path) -> dict[str, tuple]:
    """Each finished job's overrides and its figures, from its own metrics.json."""
    found = {}
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        overrides = yaml.safe_load((metrics_file.parent / ".hydra" / "overrides.yaml").read_text())
        kept = " ".join(o for o in overrides if o.startswith(("optimizer.", "hparams_search.trial")))
        found[kept] = (metrics["val/acc_best"], metrics["test/acc"], metrics["epochs"])
    return found


def slurm_job_ids(sweep_dir: Path) -> set[str]:
    """The SLURM jobs submitit's folder names: a job id, or JOBID_TASK for each task of an array job (the array's own
    folder, JOBID, is left out)."""
    names = {folder.name for folder in (sweep_dir / ".submitit").iterdir() if folder.name.split("_")[0].isdigit()}
    return {name for name in names if not any(other.startswith(f"{name}_") for other in names)}


@pytest.mark.parametrize("search", ["grid", "optuna"])
def test_a_sweep_through_sbatch_gives_the_local_launchers_results(search, slurm_cluster, shapes_root, tmp_path):
    """A 2-job grid sweep and a 3-trial Optuna study, each once with Hydra's local launcher and once as SLURM jobs."""
    swept = ["optimizer.lr=0.003,0.01"] if search == "grid" else ["hparams_search=optuna", LR, "hparams_search.n_trials=3"]
    common = [*swept, *TRIAL, "trainer.max_epochs=1", "trainer.accelerator=cpu", f"paths.data_dir={shapes_root}"]
    local = sweep(*common, f"hydra.sweep.dir={tmp_path / 'local'}")
    assert local.returncode == 0, local.stderr[-3000:]
    on_slurm = sweep(*common, *ON_SLURM, f"hydra.sweep.dir={tmp_path / 'slurm'}")
    assert on_slurm.returncode == 0, on_slurm.stdout[-2000:] + on_slurm.stderr[-3000:]
    expected = figures(tmp_path / "local")
    assert len(expected) == (2 if search == "grid" else 3)
    found = figures(tmp_path / "slurm")
    assert sorted(found) == sorted(expected)  # the same jobs (for the study: the same trials' parameters, in order)
    for job, values in expected.items():
        assert found[job] == pytest.approx(values, abs=1e-6), job
    assert len(slurm_job_ids(tmp_path / "slurm")) == len(expected)  # each job went through sbatch


def test_ddp_inside_a_slurm_job_of_the_launcher_runs_two_tasks(slurm_cluster, shapes_root, tmp_path):
    sweep_dir = tmp_path / "ddp"
    result = sweep("model=lenet", "data=mnist", "data.batch_size=32", "data.val_size=100", "callbacks=minimal",
                   "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_epochs=1",
                   "seed=0", f"paths.data_dir={shapes_root}", *ON_SLURM, f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (job,) = slurm_job_ids(sweep_dir)
    logs = {path.name: path.read_text() for path in (sweep_dir / ".submitit" / job).glob("*_log.*")}
    assert sum(name.endswith(".out") for name in logs) == 2, sorted(logs)  # two tasks, one log each
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    # 1200 shapes less 100 for validation over 2 ranks: rank zero trains its 550 (one process would train all 1100)
    assert metrics["history"][0]["train_samples"] == 550


def test_a_worker_paused_past_its_heartbeat_finishes_its_run_and_exits_cleanly(shapes_root, tmp_path):
    """A worker suspended (SIGSTOP) mid-trial: another worker fails the silent trial and retries it; when the first
    one goes on, its run trains to its end and keeps its figures, and it exits 0 instead of a traceback."""
    import signal
    import time

    url, name = f"journal:{tmp_path / 'study.journal'}", "paused"
    common = ["hparams_search=optuna", LR, *TRIAL, "hparams_search.n_trials=2", "hparams_search.shared=true",
              "hparams_search.heartbeat_seconds=1", f"hparams_search.storage={url}", f"hparams_search.study_name={name}",
              f"paths.data_dir={shapes_root}"]
    paused = subprocess.Popen([sys.executable, "train.py", "-m", *common, "trainer.max_epochs=2",
                               f"hydra.sweep.dir={tmp_path / 'a'}"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not list((tmp_path / "a").glob("0/checkpoints/*.ckpt")) and time.time() < deadline:
            time.sleep(0.2)  # its trial 0 is training
        paused.send_signal(signal.SIGSTOP)
        other = sweep(*common, "trainer.max_epochs=2", f"hydra.sweep.dir={tmp_path / 'b'}")
        assert other.returncode == 0, other.stderr[-3000:]
    finally:
        paused.send_signal(signal.SIGCONT)
    out, err = paused.communicate(timeout=600)
    assert paused.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "was ended by another worker of the shared study" in out + err
    assert (tmp_path / "a" / "0" / "metrics.json").is_file()  # its run's figures, kept
    trials = shared_trials(url, name)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["interrupted"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_a_journal_cut_mid_record_keeps_the_studys_finished_trials(tmp_path):
    """A worker killed while appending leaves half a record: the study goes on from the records before it."""
    from optuna.storages.journal import JournalFileBackend

    from tinyvision.search.study import _journal

    path = tmp_path / "study.journal"
    study = optuna.create_study(study_name="s", storage=optuna.storages.JournalStorage(JournalFileBackend(str(path))))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    with open(path, "ab") as handle:
        handle.write(b'{"op_code": 4, "worker_id": "w", "trial_id": 2, "sta')  # cut mid-write
    storage = _journal(f"journal:{path}", "hparams_search.storage")
    again = optuna.load_study(study_name="s", storage=storage)
    assert len([t for t in again.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2
    assert (tmp_path / "study.journal.cut").read_bytes().startswith(b'{"op_code": 4')
    again.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)  # and it goes on
    assert len(optuna.load_study(study_name="s", storage=_journal(f"journal:{path}", "k")).trials) == 3
