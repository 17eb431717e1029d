"""Train, then eval, then predict on photo-like files, then look at TensorBoard and a sweep summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, draw_shape

pytestmark = pytest.mark.slow  # trains runs in subprocesses: make test-fast leaves these out

FAST = ["data.batch_size=64", "data.val_size=200", "trainer.max_epochs=4", "optimizer.lr=0.003"]


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def shapes_run(shapes_root, tmp_path_factory) -> Path:
    """A ConvNet trained on the synthetic shape digits, with the default callbacks (pictures on)."""
    run_dir = tmp_path_factory.mktemp("use") / "run"
    result = run_script("train.py", "model=convnet", "data=mnist", *FAST, f"paths.data_dir={shapes_root}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] > 0.9
    # No library warning the user can do nothing about (torch.jit.trace's deprecation, Lightning's LeafSpec)
    assert not [line for line in result.stderr.splitlines() if "Warning" in line or "deprecated" in line], result.stderr[-3000:]
    return run_dir


def test_eval_of_a_checkpoint_matches_the_training_run(shapes_run, shapes_root, tmp_path):
    out = tmp_path / "eval"
    result = run_script("eval.py", f"ckpt_path={shapes_run / 'checkpoints' / 'best.ckpt'}", f"paths.data_dir={shapes_root}",
                        f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    trained = json.loads((shapes_run / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(trained["test/loss"], abs=1e-6)  # the same test loop as training's
    # one vocabulary: what training's metrics.json calls its test figures, eval's calls the same
    assert {key for key in trained if key.startswith("test/")} <= set(metrics)
    assert metrics["test_report"] == trained["test_report"]
    assert metrics["images"] == 300 and len(metrics["test_report"]["per_class"]) == 10
    assert sum(map(sum, metrics["confusion_matrix"])) == 300
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert "test accuracy" in result.stdout and "confusion matrix" in result.stdout


def photo_of_shape(path: Path, label: int) -> None:
    """Dark ink on light paper, off centre, far larger than 28×28: a phone photo of a drawn 'digit'."""
    draw_shape(label, (220, 160), (30, 20, 130, 130), ink=40, background=225, width=9).save(path)


def test_predict_classifies_photo_like_images(shapes_run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for label in range(10):
        photo_of_shape(photos / f"shape_{label}.png", label)
    os.mkfifo(photos / "pipe.png")  # named like an image: skipped, never opened (it would block its reader)
    result = run_script("predict.py", f"ckpt_path={shapes_run / 'checkpoints' / 'best.ckpt'}", f"inputs={photos}",
                        f"hydra.run.dir={tmp_path / 'predict'}")
    assert result.returncode == 0, result.stderr[-3000:]
    output = tmp_path / "predict" / "predictions.json"  # written without being asked, into the command's folder
    assert f"written: {output}" in result.stdout.replace("\n", "")
    predictions = json.loads(output.read_text())["predictions"]
    right = [p for p in predictions if p["class"].split(" ")[0] == Path(p["file"]).stem.split("_")[1]]
    assert len(predictions) == 10 and len(right) >= 9, predictions
    assert all(len(p["top"]) == 3 for p in predictions)
    assert "shape_3.png" in result.stdout


def test_predict_refuses_an_input_that_is_not_a_regular_file(shapes_run, tmp_path):
    os.mkfifo(tmp_path / "photo.png")
    result = run_script("predict.py", f"ckpt_path={shapes_run / 'checkpoints' / 'best.ckpt'}", f"inputs={tmp_path / 'photo.png'}",
                        f"hydra.run.dir={tmp_path / 'predict'}")
    assert result.returncode == 2 and "is not a regular file (a FIFO, socket or device)" in result.stderr


def test_predict_reports_a_bad_file_and_classifies_the_others(shapes_run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo_of_shape(photos / "good_1.png", 1)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    output = tmp_path / "predictions.json"
    result = run_script("predict.py", f"ckpt_path={shapes_run / 'checkpoints' / 'best.ckpt'}", f"inputs={photos}",
                        f"output={output}", f"hydra.run.dir={tmp_path / 'predict'}")
    assert result.returncode == 1  # the exit status says a file failed
    rows = {Path(p["file"]).name: p for p in json.loads(output.read_text())["predictions"]}
    assert "UnidentifiedImageError" in rows["broken.png"]["error"]
    assert rows["good_1.png"]["class"].startswith("1")


def test_a_truncated_checkpoint_is_named(shapes_run, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((shapes_run / "checkpoints" / "best.ckpt").read_bytes()[:5000])
    result = run_script("predict.py", f"ckpt_path={broken}", f"inputs={tmp_path}", f"hydra.run.dir={tmp_path / 'p'}")
    assert result.returncode == 2 and f"ckpt_path={broken} cannot be read" in result.stderr


def test_tensorboard_holds_the_pictures_and_per_class_scalars(shapes_run):
    events = EventAccumulator(str(shapes_run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/inputs", "val/confusion_matrix", "val/misclassified"} <= set(tags["images"])
    assert len(events.Images("val/confusion_matrix")) == 4  # one per validation epoch
    assert {f"val/acc_class/{i} - {name}" for i, name in enumerate(["zero", "one"])} <= set(tags["scalars"])
    assert tags["graph"]


def logged_hparams(tensorboard_dir: Path) -> tuple[dict, set[str]]:
    """The HPARAMS entry of a run's event files: its hyperparameters and the metric tags shown beside them."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    params = {key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}
    # TensorBoard opens HPARAMS on the first five columns of its order, which puts the marked ones first
    assert {info.name for info in experiment.hparam_infos if info.differs} == {"model", "data", "data/batch_size", "optimizer/lr", "seed"}
    return params, {info.name.tag for info in experiment.metric_infos}


COMPARED = {"experiment", "model", "model/freeze", "model/bn_momentum", "data", "optimizer", "scheduler", "seed",
            "data/batch_size", "data/image_size", "data/channels", "data/val_size", "data/train_size",
            "augment/crop_padding", "augment/horizontal_flip", "augment/translate", "augment/color_jitter", "augment/erasing",
            "augment/grayscale", "augment/trivial_augment", "augment/mixup_alpha", "augment/cutmix_alpha",
            "loss/label_smoothing", "loss/class_weights", "scheduler/warmup_epochs",
            # Adam's every setting, torch's defaults included (eps, amsgrad): they come from its signature now
            "optimizer/lr", "optimizer/betas", "optimizer/eps", "optimizer/amsgrad", "optimizer/weight_decay",
            "optimizer/backbone_lr_scale",
            "trainer/max_epochs", "trainer/precision", "trainer/devices", "trainer/accumulate_grad_batches"}
RESULTS = {"val/acc_best", "val/acc", "val/loss", "test/acc", "test/loss", "run/train_seconds", "run/epochs"}


def test_hparams_show_the_compared_settings_beside_real_results(shapes_run):
    params, metric_tags = logged_hparams(shapes_run / "tensorboard")
    assert set(params) == COMPARED
    assert params["model"] == "convnet" and params["data"] == "mnist" and params["optimizer/lr"] == 0.003
    assert params["experiment"] == "none" and params["data/batch_size"] == 64
    assert metric_tags == RESULTS
    events = EventAccumulator(str(shapes_run / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert RESULTS <= scalars  # every metric has a real value: no placeholder left
    assert events.Scalars("run/epochs")[-1].value == 4
    assert "epoch" not in scalars


def test_the_final_test_has_a_per_class_report_and_pr_curves(shapes_run):
    metrics = json.loads((shapes_run / "metrics.json").read_text())
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert list(metrics["test_report"]["per_class"]) == [f"{i} - {name}" for i, name in enumerate(names)]
    assert (shapes_run / "per_class.csv").is_file()
    events = EventAccumulator(str(shapes_run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert {f"test/pr_curve/{i} - {names[i]}" for i in range(10)} <= set(events.Tags()["tensors"])


def test_a_sweep_writes_a_summary_with_one_row_per_job(shapes_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", "model=mlp,convnet", "seed=0,1", "data=mnist", *FAST, "trainer.max_epochs=1",
                        "callbacks=minimal", f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    every = list(csv.DictReader((sweep / "summary.csv").open()))
    rows = [row for row in every if row["status"] == "done"]
    assert [row["job"] for row in sorted(rows, key=lambda r: r["job"])] == ["0", "1", "2", "3"]
    assert float(rows[0]["val/acc_best"]) >= float(rows[1]["val/acc_best"])  # ranked best first
    assert {row["overrides"] for row in rows} == {f"model={m} seed={s}" for m in ("mlp", "convnet") for s in (0, 1)}
    over = {row["overrides"]: row for row in every if row["status"] == "over seeds"}
    assert set(over) == {"model=mlp", "model=convnet"} and all(row["n"] == "2" for row in over.values())
    for model, row in over.items():
        mine = [float(r["test/acc"]) for r in rows if r["overrides"].startswith(model + " ")]
        assert float(row["test/acc_mean"]) == pytest.approx(sum(mine) / 2)
    assert "over seeds" in result.stdout
    params, _ = logged_hparams(sweep / "0" / "tensorboard")  # a sweep job logs the same curated set, with mlp's settings
    assert set(params) == COMPARED | {"model/hidden", "model/activation", "model/init_std"}
    assert params["model"] == "mlp" and params["model/hidden"] == "[128, 64]"
    assert (sweep / "summary.png").stat().st_size > 1000 and "| rank |" in (sweep / "summary.md").read_text()
    assert "sweep" in result.stdout and "summary.md" in result.stdout


def test_a_sweep_of_jobs_without_validation_figures_still_gets_its_summary(shapes_root, tmp_path):
    """No validation ran (limit_val_batches=0): the jobs have no val/acc_best, and the summary says "-" for it."""
    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", "seed=0,1", "data=mnist", *FAST, "trainer.max_epochs=1", "trainer.limit_val_batches=0",
                        "callbacks=minimal", "logger=none", f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0 and "SweepSummary" not in result.stderr, result.stderr[-3000:]
    rows = [row for row in csv.DictReader((sweep / "summary.csv").open()) if row["status"] == "done"]
    assert len(rows) == 2 and all(row["val/acc_best"] == "" and float(row["test/acc"]) > 0 for row in rows)
    assert "| - |" in (sweep / "summary.md").read_text()


def test_the_run_folder_holds_its_curves_and_the_tests_confusion_matrix_as_pictures(shapes_run):
    """results.png and confusion_matrix.png, readable without a server; the curves drawn are metrics.json's history."""
    from PIL import Image

    from tinyvision.pictures import results_figure

    with Image.open(shapes_run / "results.png") as results, Image.open(shapes_run / "confusion_matrix.png") as matrix:
        assert results.size == (1100, 440) and matrix.size[0] == 2 * matrix.size[1]  # two panels each
    metrics = json.loads((shapes_run / "metrics.json").read_text())
    loss_axes, acc_axes = results_figure(metrics["history"], metrics).axes
    drawn = {line.get_label(): list(line.get_ydata()) for line in acc_axes.get_lines()}
    assert drawn["val"] == [row["val/acc"] for row in metrics["history"]] and len(drawn["val"]) == 4
    assert drawn["train"] == [row["train/acc"] for row in metrics["history"]]
    assert drawn[f"test (best checkpoint) {metrics['test/acc']:.4f}"] == [metrics["test/acc"]]
    assert [list(line.get_ydata()) for line in loss_axes.get_lines()][1] == [row["val/loss"] for row in metrics["history"]]


def test_eval_takes_the_trainer_settings_of_a_test(shapes_run, shapes_root, tmp_path):
    """trainer.limit_test_batches tests a part (the template's ++trainer.limit_test_batches), in bf16 on the CPU."""
    out = tmp_path / "eval"
    result = run_script("eval.py", f"ckpt_path={shapes_run / 'checkpoints' / 'best.ckpt'}", f"paths.data_dir={shapes_root}",
                        "batch_size=100", "trainer.limit_test_batches=2", "trainer.precision=bf16-mixed",
                        "trainer.accelerator=cpu", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 200 and sum(map(sum, metrics["confusion_matrix"])) == 200
