"""Runs that are easy to compare: the per-class report, seeds aggregated in a sweep summary, curated
hyperparameters, and the CSV and MLflow loggers read back with their own readers."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tinyvision.files import STUDY_RESULT
from tinyvision.hparams import compared_hparams
from tinyvision.report import classification_report
from tinyvision.sweep import collect, over_repeats, write_summary
from tinyvision.training import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.batch_size=64", "data.val_size=100", "trainer.max_epochs=2", "trainer.limit_train_batches=3"]


def test_the_report_matches_figures_worked_out_by_hand():
    # true 0 0 0 1 1 2, predicted 0 0 1 1 2 2; every prediction made with confidence 0.8.
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    rows = {0: [0.8, 0.15, 0.05], 1: [0.15, 0.8, 0.05], 2: [0.15, 0.05, 0.8]}
    predicted = [0, 0, 1, 1, 2, 2]
    probabilities = torch.tensor([rows[p] for p in predicted])
    report = classification_report(probabilities, labels, ["a", "b", "c"], top_k=2)

    # a: TP 2, FP 0, FN 1; b: TP 1, FP 1, FN 1; c: TP 1, FP 1, FN 0
    expected = {"a": (1.0, 2 / 3, 0.8, 3), "b": (0.5, 0.5, 0.5, 2), "c": (0.5, 1.0, 2 / 3, 1)}
    for name, (precision, recall, f1, support) in expected.items():
        row = report["per_class"][name]
        assert row["precision"] == pytest.approx(precision) and row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1) and row["support"] == support
    assert report["macro"]["precision"] == pytest.approx(2 / 3)
    assert report["macro"]["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert report["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report["weighted"]["precision"] == pytest.approx((3 * 1 + 2 * 0.5 + 0.5) / 6)
    assert report["weighted"]["recall"] == pytest.approx(4 / 6)
    assert report["weighted"]["f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert report["accuracy"] == pytest.approx(4 / 6)
    # top 2: the third image (true a, second choice a) counts, the fifth (true b, second choice a) does not
    assert report["top2_accuracy"] == pytest.approx(5 / 6)
    assert report["ece"] == pytest.approx(0.8 - 4 / 6)  # one confidence bin: |0.8 - accuracy|


def write_job(sweep: Path, job: int, overrides: list[str], val: float, test: float, seconds: float) -> None:
    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    metrics = {"val/acc_best": val, "test/acc": test, "epochs": 1, "wall_seconds": seconds}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_a_seed_sweep_gets_one_aggregated_row_per_configuration(tmp_path):
    sweep = tmp_path / "sweep"
    figures = {("model=lenet", "seed=0"): (0.80, 0.79, 10.0), ("model=lenet", "seed=1"): (0.84, 0.81, 12.0),
               ("model=mlp", "seed=0"): (0.70, 0.69, 5.0), ("model=mlp", "seed=1"): (0.74, 0.73, 7.0)}
    for job, (overrides, (val, test, seconds)) in enumerate(figures.items()):
        write_job(sweep, job, ["data=fashion", *overrides], val, test, seconds)
    rows = collect(sweep)
    aggregated = over_repeats(rows)
    assert [row["overrides"] for row in aggregated] == ["model=lenet", "model=mlp"]  # best mean first
    lenet = aggregated[0]
    assert lenet["n"] == 2 and lenet["repeats"] in ("0 1", "1 0") and lenet["over"] == "seeds"
    assert lenet["val/acc_best_mean"] == pytest.approx(0.82) and lenet["test/acc_mean"] == pytest.approx(0.80)
    assert lenet["val/acc_best_std"] == pytest.approx(statistics.stdev([0.80, 0.84]))
    assert lenet["wall_seconds_mean"] == pytest.approx(11.0)
    assert aggregated[1]["test/acc_mean"] == pytest.approx(0.71)

    write_summary(sweep, rows)
    csv_rows = list(csv.DictReader((sweep / "summary.csv").open()))
    over = [row for row in csv_rows if row["status"] == "over seeds"]
    assert len(csv_rows) == 6 and [row["overrides"] for row in over] == ["model=lenet", "model=mlp"]
    assert float(over[0]["val/acc_best_mean"]) == pytest.approx(0.82)
    summary = (sweep / "summary.md").read_text()
    assert "| `model=lenet` | 2 |" in summary and "0.8200 ± 0.0283" in summary
    assert (sweep / "summary.png").stat().st_size > 1000


def test_a_sweep_without_seeds_and_an_optuna_study_are_not_aggregated(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, ["model=lenet"], 0.8, 0.8, 1.0)
    write_job(sweep, 1, ["model=mlp"], 0.7, 0.7, 1.0)
    assert over_repeats(collect(sweep)) == []
    study = tmp_path / "study"
    write_job(study, 0, ["seed=0", "optimizer.lr=0.1"], 0.8, 0.8, 1.0)
    write_job(study, 1, ["seed=1", "optimizer.lr=0.2"], 0.7, 0.7, 1.0)
    (study / STUDY_RESULT).write_text(yaml.safe_dump(
        {"study_name": "s", "direction": "maximize", "metric": "val/acc_best", "trials": {"complete": 2}, "plots": {}}))
    write_summary(study, collect(study))
    assert "Over seeds" not in (study / "summary.md").read_text()


def test_compared_hparams_hold_what_people_compare_and_nothing_internal(make_config):
    from omegaconf import OmegaConf

    cfg = make_config("model=mlp", "optimizer=sgd", "scheduler=step", "logger=many")
    params = compared_hparams(OmegaConf.to_container(cfg, resolve=True), {"model": "mlp", "data": "fashion",
                                                                          "optimizer": "sgd", "scheduler": "step"})
    assert params["model"] == "mlp" and params["experiment"] == "none"
    assert params["model/hidden"] == "[128, 64]" and params["optimizer/momentum"] == 0.0 and params["scheduler/step_size"] == 10
    assert {"data/batch_size", "data/image_size", "data/channels", "data/val_size", "augment/horizontal_flip",
            "trainer/max_epochs", "trainer/precision", "trainer/devices", "seed"} <= set(params)
    assert not [key for key in params if "_target_" in key or key.split("/")[0] in ("callbacks", "logger", "paths", "hydra")]
    assert all(isinstance(value, (int, float, str, bool)) for value in params.values())


def test_csv_and_mlflow_loggers_are_read_back_with_their_own_readers(make_config, tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config("logger=many", f"logger.mlflow.tracking_uri={store}",
                      f"logger.mlflow.artifact_location={(tmp_path / 'artifacts').as_uri()}", *TINY, run_dir=run_dir)
    metrics = train(cfg)

    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("tinyvision").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["optimizer"] == "Adam" and run.data.params["optimizer/lr"] == "0.001"
    assert "callbacks/checkpoint/_target_" not in run.data.params
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val/acc")] == \
        pytest.approx([row["val/acc"] for row in metrics["history"]])
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert run.data.metrics["run/epochs"] == 2 and "test/f1_macro" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "per_class.csv"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]

    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    epochs = [row for row in rows if row.get("val/acc")]
    assert [float(row["val/acc"]) for row in epochs] == pytest.approx([row["val/acc"] for row in metrics["history"]])
    assert yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())["model"] == "LeNet"


def test_a_training_run_reports_per_class_figures(make_config, tmp_path):
    run_dir = tmp_path / "run"
    metrics = train(make_config(*TINY, run_dir=run_dir))
    report = metrics["test_report"]
    assert len(report["per_class"]) == 10 and report["accuracy"] == pytest.approx(metrics["test/acc"])
    assert metrics["test/f1_macro"] == pytest.approx(report["macro"]["f1"]) and "test/top3_acc" in metrics
    assert sum(row["support"] for row in report["per_class"].values()) == report["images"]
    lines = (run_dir / "per_class.csv").read_text().splitlines()
    assert lines[0] == "class,precision,recall,f1,support" and len(lines) == 1 + 10 + 2


@pytest.mark.slow
def test_help_shows_tinyvisions_groups_and_examples():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for group in ("model", "data", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment", "hparams_search"):
        assert f"\n  {group} " in result.stdout, group
    for example in ("model=lenet data=fashion", "experiment=lenet_fashion", "-m model=lenet,convnet seed=0,1,2",
                    "-m hparams_search=lenet_fashion", "resume=outputs/runs/"):
        assert f"python train.py {example}" in result.stdout, example
    for folder in ("model", "data", "optimizer", "scheduler", "logger", "experiment"):  # every option is listed
        for option in (ROOT / "conf" / folder).glob("*.yaml"):
            assert option.stem in result.stdout, option
    assert "Powered by Hydra" not in result.stdout and "outputs/runs/" in result.stdout


@pytest.mark.parametrize(("folder", "name"), [("run", "run"), ("sweep/3", "sweep/3"), ("sweep/3_fold0", "sweep/3_fold0")])
def test_an_mlflow_run_is_named_after_its_run_or_its_sweep_and_job(folder, name, make_config, tmp_path):
    from tinyvision.config import validate_train
    from tinyvision.training import _loggers

    settings = validate_train(make_config("logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}",
                                          run_dir=tmp_path / folder), look_outside=False)
    [logger] = _loggers(settings, None)
    assert logger._run_name == name  # Lightning's MLFlowLogger keeps it until the run starts
