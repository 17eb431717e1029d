"""Train, then eval, then predict on photo-like files, then look at TensorBoard and a sweep summary."""

from __future__ import annotations

import csv
import json
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
    return run_dir


def test_eval_of_a_checkpoint_matches_the_training_run(shapes_run, shapes_root, tmp_path):
    out = tmp_path / "eval"
    result = run_script("eval.py", f"ckpt_path={shapes_run / 'checkpoints' / 'best.ckpt'}", f"paths.data_dir={shapes_root}",
                        f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    trained = json.loads((shapes_run / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert metrics["images"] == 300 and len(metrics["per_class_acc"]) == 10
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
    output = tmp_path / "predictions.json"
    result = run_script("predict.py", f"ckpt_path={shapes_run / 'checkpoints' / 'best.ckpt'}", f"inputs={photos}",
                        f"output={output}", f"hydra.run.dir={tmp_path / 'predict'}")
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads(output.read_text())["predictions"]
    right = [p for p in predictions if p["class"].split(" ")[0] == Path(p["file"]).stem.split("_")[1]]
    assert len(predictions) == 10 and len(right) >= 9, predictions
    assert all(len(p["top"]) == 3 for p in predictions)
    assert "shape_3.png" in result.stdout


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


def test_a_sweep_writes_a_summary_with_one_row_per_job(shapes_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", "model=mlp,convnet", "data=mnist", *FAST, "trainer.max_epochs=1", "callbacks=minimal",
                        f"paths.data_dir={shapes_root}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [row["job"] for row in sorted(rows, key=lambda r: r["job"])] == ["0", "1"]
    assert float(rows[0]["val/acc_best"]) >= float(rows[1]["val/acc_best"])  # ranked best first
    assert {row["overrides"] for row in rows} == {"model=mlp", "model=convnet"}
    assert (sweep / "summary.png").stat().st_size > 1000 and "| rank |" in (sweep / "summary.md").read_text()
    assert "sweep" in result.stdout and "summary.md" in result.stdout
