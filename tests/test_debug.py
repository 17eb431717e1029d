"""The debug group (lightning-hydra-template's five): each observed by what it changes in a real run."""

from __future__ import annotations

import pytest

from tinyvision.training import train

SMALL_BATCHES = ["data=mnist", "model=convnet", "data.batch_size=2", "data.eval_batch_size=2", "data.val_size=40"]


@pytest.fixture
def run(make_config, tmp_path):
    def run_with(*overrides: str):
        run_dir = tmp_path / "run"
        return train(make_config(*overrides, run_dir=run_dir)), run_dir

    return run_with


def test_debug_default_trains_one_epoch_on_the_cpu_with_anomaly_detection_and_no_logger(make_config, run):
    cfg = make_config("debug=default")
    assert cfg.trainer.detect_anomaly is True and cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
    assert not cfg.logger and cfg.trainer.max_epochs == 1
    metrics, run_dir = run("debug=default", "data.train_size=100", "data.val_size=50")
    assert metrics["epochs"] == 1 and not (run_dir / "tensorboard").exists()


def test_debug_fdr_runs_one_batch_of_each_split(run):
    metrics, _ = run("debug=fdr", *SMALL_BATCHES)
    assert metrics["history"][0]["train_samples"] == 2 and metrics["test_report"]["images"] == 2


def test_debug_limit_trains_a_hundredth_and_tests_a_twentieth_of_the_batches(run):
    metrics, _ = run("debug=limit", *SMALL_BATCHES)  # 180 training batches, 50 test batches
    assert metrics["epochs"] == 3 and [row["train_samples"] for row in metrics["history"]] == [2, 2, 2]
    assert metrics["test_report"]["images"] == 2 * 2


def test_debug_overfit_trains_on_the_same_three_batches_every_epoch(run):
    """Unshuffled, the first three batches again and again: the training loss falls towards 0."""
    metrics, _ = run("debug=overfit", "data=mnist", "model=convnet", "data.batch_size=8", "data.val_size=50",
                     "optimizer.lr=0.003")
    history = metrics["history"]
    assert len(history) == 20 and all(row["train_samples"] == 3 * 8 for row in history)
    assert history[-1]["train/loss"] < history[0]["train/loss"] / 5 and history[-1]["train/acc"] == 1.0


def test_under_overfit_batches_the_training_batches_are_the_same_every_epoch(make_config):
    """Lightning unshuffles a DataLoader's sampler itself; tinyvision's device-resident batches unshuffle themselves."""
    import lightning as L

    from tinyvision.config import validate_train
    from tinyvision.training import build

    datamodule, _ = build(validate_train(make_config("data=mnist", "data.val_size=50")))
    datamodule.setup("fit")
    in_order = datamodule.splits["train"][1].tolist()
    drawn = {}
    for overfit in (0, 3):
        datamodule.trainer = L.Trainer(overfit_batches=overfit, logger=False, enable_checkpointing=False)
        drawn[overfit] = [label for _, labels in datamodule.train_dataloader() for label in labels.tolist()]
    assert drawn[3] == in_order  # the first batches, whatever the epoch: the same every epoch
    assert sorted(drawn[0]) == sorted(in_order) and drawn[0] != in_order  # shuffled


def test_debug_profiler_writes_the_profile_into_the_run_folder(run):
    _, run_dir = run("debug=profiler", "data.train_size=100", "data.val_size=50")
    assert "FIT Profiler Report" in (run_dir / "fit-profile.txt").read_text()
    assert "run_training_batch" in (run_dir / "fit-profile.txt").read_text()
