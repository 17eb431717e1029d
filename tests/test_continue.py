"""Continue a finished run to more epochs (resume= with trainer.max_epochs), and start a new run from a trained run's
weights (init_from=): on real Fashion-MNIST images."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_real_data import needs_fashion

from conftest import CONF
from tinyvision.checkpoints import config_for_resume, start_from_weights
from tinyvision.errors import ConfigError
from tinyvision.training import build, train

REAL = ["model=convnet", "data=fashion", "data.download=false", "data.train_size=2000", "data.val_size=1000",
        "trainer=cpu", "trainer.limit_test_batches=2", "data.eval_batch_size=1000", "logger=none"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A ConvNet trained one epoch on 2,000 real images: the run the others continue or start from."""
    folder = tmp_path_factory.mktemp("continue")

    def config(*overrides, run_dir):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="train", overrides=[f"paths.data_dir={folder / 'data'}", f"paths.output_dir={run_dir}",
                                                           "callbacks=minimal", *REAL, *overrides])

    train(config("trainer.max_epochs=1", run_dir=folder / "parent"))
    return folder, config


@needs_fashion
def test_a_finished_run_continued_to_more_epochs_equals_one_trained_that_long_at_once(parent):
    folder, config = parent
    straight = train(config("trainer.max_epochs=2", run_dir=folder / "straight"))
    continued_dir = folder / "continued"
    continued_dir.mkdir()
    for name in ("checkpoints", "metrics.json"):  # a copy of the parent, continued in its own folder
        source = folder / "parent" / name
        if source.is_dir():
            (continued_dir / name).mkdir()
            for file in source.iterdir():
                (continued_dir / name / file.name).write_bytes(file.read_bytes())
        else:
            (continued_dir / name).write_bytes(source.read_bytes())
    with pytest.raises(ConfigError, match=r"finished already after 1 epochs .* trainer.max_epochs=6"):
        config_for_resume(config(f"resume={continued_dir}", run_dir=continued_dir), [f"resume={continued_dir}"])
    overrides = [f"resume={continued_dir}", "trainer.max_epochs=2"]
    continued = train(config_for_resume(config(*overrides, run_dir=continued_dir), overrides))
    assert continued["epochs"] == 2
    assert [row["val/acc"] for row in continued["history"]] == [row["val/acc"] for row in straight["history"]]
    assert continued["test/acc"] == pytest.approx(straight["test/acc"], abs=1e-6)
    kept = json.loads((continued_dir / "metrics_epoch1.json").read_text())
    assert kept == json.loads((folder / "parent" / "metrics.json").read_text())


@needs_fashion
def test_a_fine_tuned_run_starts_where_its_parent_ended(parent):
    folder, config = parent
    before = json.loads((folder / "parent" / "metrics.json").read_text())
    child = train(config(f"init_from={folder / 'parent'}", "trainer.max_epochs=1", "optimizer.lr=0.0003",
                         run_dir=folder / "child"))
    assert child["init_from"] == str(folder / "parent" / "checkpoints" / "best.ckpt")
    # the same validation images: the child's first epoch begins from the parent's end, not from chance
    assert child["history"][0]["val/acc"] >= before["val/acc"] - 0.02 > 0.5


@needs_fashion
def test_a_new_head_for_other_classes_keeps_every_other_weight(parent, tmp_path):
    folder, config = parent
    parent_weights = torch.load(folder / "parent" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    from tinyvision.config import validate_train

    _, classifier = build(validate_train(config("data.num_classes=3", run_dir=tmp_path / "run"), look_outside=False))
    start_from_weights(classifier, str(folder / "parent"))
    weights = classifier.state_dict()
    assert torch.equal(weights["net.features.0.weight"], parent_weights["net.features.0.weight"])
    head = [key for key in weights if key.startswith("net.")][-2:]
    assert weights[head[0]].shape[0] == 3 and parent_weights[head[0]].shape[0] == 10
    _, lenet = build(validate_train(config("model=lenet", run_dir=tmp_path / "run2"), look_outside=False))
    with pytest.raises(ConfigError, match=r"is another architecture than this run's \(tinyvision.models.LeNet"):
        start_from_weights(lenet, str(folder / "parent"))
