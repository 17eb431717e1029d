"""train.py as a user runs it: one run, a multirun, and what they look at afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT
from tinyvision.data import TensorDataModule
from tinyvision.module import ImageClassifier

SMALL = ["data=mnist", "data.batch_size=32", "data.val_size=50", "trainer.max_epochs=2"]


def run_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def single_run(data_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = run_train("model=lenet", *SMALL, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_run_dir_holds_config_log_checkpoints_and_metrics(single_run):
    run_dir, result = single_run
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["model"]["_target_"] == "tinyvision.models.LeNet" and config["data"]["dataset"] == "mnist"
    assert (run_dir / "train.log").is_file()
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert metrics["val/acc_best"] == max(r["val/acc"] for r in metrics["history"])
    # LeNet (sigmoid) at lr 1e-3 stays near chance accuracy over these 22 batches (measured test/acc 0.09): its loss
    # falls (train 2.35 -> 2.31, val 2.33 -> 2.30), so the run is learning; an accuracy floor would need a longer run.
    first, second = metrics["history"]
    assert second["train/loss"] < first["train/loss"] and second["val/loss"] < first["val/loss"]
    assert metrics["wall_seconds"] > 0 and metrics["train_samples_per_second"] > 0


def test_console_ends_with_a_summary(single_run):
    run_dir, result = single_run
    tail = result.stdout[-2000:]
    assert "test accuracy" in tail and "best val accuracy" in tail
    assert run_dir.name in tail.replace("\n", "").replace("│", "").replace(" ", "")


def test_tensorboard_shows_scalars_and_hparams(single_run):
    run_dir, _ = single_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "train/lr", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"} <= scalars
    plugins = set()
    for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        for event in EventFileLoader(str(path)).Load():
            plugins |= {value.metadata.plugin_data.plugin_name for value in event.summary.value}
    assert "hparams" in plugins


def test_best_checkpoint_reloads_alone_and_gives_the_same_test_accuracy(single_run, data_root):
    run_dir, _ = single_run
    best = run_dir / "checkpoints" / "best.ckpt"
    raw = torch.load(best, map_location="cpu", weights_only=True)  # plain config: no pickled OmegaConf objects
    assert raw["hyper_parameters"]["data"]["channels"] == 1 and len(raw["class_names"]) == 10
    assert raw["config"]["model"]["_target_"] == "tinyvision.models.LeNet" and raw["config"]["data"]["batch_size"] == 32
    classifier = ImageClassifier.load_from_checkpoint(best, map_location="cpu")
    data = classifier.hparams.data
    datamodule = TensorDataModule(dataset=data["dataset"], root=str(data_root), channels=data["channels"],
                                  image_size=data["image_size"], num_classes=data["num_classes"], val_size=50)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    accuracy = trainer.test(classifier, datamodule=datamodule, verbose=False)[0]["test/acc"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert classifier.class_names[0] == "0 - zero"


def test_bad_input_prints_one_clear_line_and_exits_2(data_root, tmp_path):
    result = run_train("optimizer.lr=-1", f"paths.data_dir={data_root}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: optimizer.lr=-1: a positive number, e.g. optimizer.lr=0.01"]


def test_multirun_jobs_get_their_own_dirs_and_a_failed_job_spares_the_others(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_train(
        "-m", "model=mlp,lenet", "data.train_size=100,100000", *SMALL, "trainer.max_epochs=1", "callbacks=minimal",
        f"paths.data_dir={data_root}", f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode != 0  # the sweep reports that jobs failed
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    done = {p.name for p in jobs if (p / "metrics.json").is_file()}
    # jobs 1 and 3 ask for more training images than there are: only reading the data finds it out
    assert done == {"0", "2"}, result.stderr[-3000:]
    for job in ("0", "2"):
        assert (sweep / job / "checkpoints" / "best.ckpt").is_file()
    assert "error: data.train_size=100000 does not fit the training split" in (sweep / "1" / "train.log").read_text()


def test_the_config_groups_ship_inside_the_package_and_conf_at_the_root_is_them():
    """Hydra reads the package's own conf/ (an installed tinyvision has it as package data); the checkout's conf/ is
    the same folder, so editing either edits what the scripts compose."""
    import tinyvision
    from tinyvision.cli import CONF_DIR

    assert CONF_DIR == Path(tinyvision.__file__).resolve().parent / "conf"
    assert (CONF_DIR / "train.yaml").is_file() and (CONF_DIR / "model" / "lenet.yaml").is_file()
    assert (Path(__file__).resolve().parents[1] / "conf").resolve() == CONF_DIR


def test_a_finished_command_runs_its_exit_handlers_then_skips_the_teardown(data_root, tmp_path):
    """train.py ends with os._exit once done (tinyvision.cli.exit_without_teardown): the atexit handlers still run
    (one registered by a sitecustomize at start-up, before any of the libraries'), the outputs are whole, the status
    is 0, and an object freed only by the interpreter's teardown is never freed."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import atexit, pathlib\n"
        f"folder = pathlib.Path({str(tmp_path)!r})\n"
        "atexit.register(lambda: (folder / 'atexit_ran').write_text('yes'))\n"
        "class FreedAtTeardown:\n"
        "    def __del__(self):\n"
        "        (folder / 'teardown_ran').write_text('yes')\n"
        "kept = FreedAtTeardown()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "data=mnist", "data.val_size=50", "trainer.max_epochs=1",
                             "trainer.limit_train_batches=2", f"paths.data_dir={data_root}",
                             f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "atexit_ran").read_text() == "yes"
    assert not (tmp_path / "teardown_ran").exists()
    assert "run dir" in result.stdout  # the summary table, flushed before the exit
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] is not None
    assert (run_dir / "train.log").read_text().rstrip().endswith(f"run_dir={run_dir}")
    events = EventAccumulator(str(next((run_dir / "tensorboard").rglob("events.out.tfevents.*")).parent)).Reload()
    assert "test/acc" in events.Tags()["scalars"]  # TensorBoard's writer flushed and closed before the exit


def test_a_script_run_inside_another_program_returns_instead_of_exiting():
    from tinyvision.cli import exit_without_teardown

    assert exit_without_teardown() is None  # pytest's process goes on
