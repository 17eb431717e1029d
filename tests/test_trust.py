"""Results a user can trust: the weight average follows a short run, a subset trains on what it says, and a
model whose validation sits at chance while training learns is reported, not summarised as a result."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from tinyvision.callbacks import EMA, WarmedUpDecay, chance_warning
from tinyvision.config import validate_train
from tinyvision.training import build, train


def test_warmed_up_decay_follows_timm_formula_and_caps_at_the_decay():
    rule = WarmedUpDecay(0.98, 2 / 3)
    assert rule.decay_at(1) == pytest.approx(1 - 2 ** (-2 / 3))  # 0.37: the first updates follow the weights
    assert rule.decay_at(20) == pytest.approx(1 - 21 ** (-2 / 3))
    assert rule.decay_at(10_000) == 0.98
    assert WarmedUpDecay(0.98, None).decay_at(1) == 0.98


def test_the_average_of_a_short_run_keeps_little_of_the_initial_weights():
    """After 20 updates toward a fixed target, a fixed 0.98 decay keeps 0.98^20 = 67% of the start; the warmed-up
    average keeps the product of its decays, under 1%."""
    start, target = nn.Linear(4, 2, bias=False), nn.Linear(4, 2, bias=False)
    for power, most_kept in ((None, 0.98 ** 20), (2 / 3, 0.01)):
        averaged = torch.optim.swa_utils.AveragedModel(start, multi_avg_fn=WarmedUpDecay(0.98, power), use_buffers=True)
        for _ in range(21):  # the first update copies, then 20 averaging steps
            averaged.update_parameters(target if averaged.n_averaged > 0 else start)
        kept = (averaged.module.weight - target.weight).norm() / (start.weight - target.weight).norm()
        kept = float(kept.detach())
        assert kept == pytest.approx(most_kept, rel=1e-4) if power is None else kept < most_kept


def test_the_ema_callback_uses_the_warm_up_from_the_config(make_config):
    import hydra.utils

    ema = hydra.utils.instantiate(make_config("callbacks=default", "callbacks.ema.decay=0.98").callbacks.ema)
    assert isinstance(ema, EMA) and ema.update_rule.decay_at(5) < 0.98 and ema.update_rule.decay_at(10 ** 6) == 0.98
    fixed = hydra.utils.instantiate(make_config("callbacks=default", "callbacks.ema.decay=0.98",
                                                "callbacks.ema.warmup_power=null").callbacks.ema)
    assert fixed.update_rule.decay_at(5) == 0.98


@pytest.mark.parametrize("train_size, expected", [(100, 100), (0.25, 88), (1.0, 350), (None, 350)])
def test_train_size_draws_a_seeded_subset_of_the_training_split(make_config, train_size, expected):
    size = f"data.train_size={train_size}".replace("None", "null")
    datamodule, _ = build(validate_train(make_config("data=mnist", "data.val_size=50", size), look_outside=False))
    datamodule.setup("fit")
    images, labels = datamodule.splits["train"]
    assert len(images) == expected and len(datamodule.splits["val"][0]) == 50  # validation is carved first, whole
    again, _ = build(validate_train(make_config("data=mnist", "data.val_size=50", size), look_outside=False))
    again.setup("fit")
    assert torch.equal(again.splits["train"][0], images)  # the same seed draws the same subset
    # the subset is part of the training split: no validation image is trained on
    val = {bytes(image.numpy()) for image in datamodule.splits["val"][0]}
    full, _ = build(validate_train(make_config("data=mnist", "data.val_size=50"), look_outside=False))
    full.setup("fit")
    everything = {bytes(image.numpy()) for image in full.splits["train"][0]}
    subset = {bytes(image.numpy()) for image in images}
    assert subset <= everything and not (subset & val - everything)


def test_a_train_size_larger_than_the_split_is_refused(make_config):
    from tinyvision.errors import ConfigError

    datamodule, _ = build(validate_train(make_config("data=mnist", "data.val_size=50", "data.train_size=351"), look_outside=False))
    with pytest.raises(ConfigError, match=r"data.train_size=351 does not fit .* \(350 images\): use a count from 1 to 350"):
        datamodule.setup("fit")


def test_chance_warning_names_the_gap_and_the_likely_causes():
    assert chance_warning({"epoch": 3, "train/acc": 0.30, "val/acc": 0.28}, 10, ema=False) is None  # learning, both
    assert chance_warning({"epoch": 3, "train/acc": 0.12, "val/acc": 0.10}, 10, ema=False) is None  # neither learned
    warning = chance_warning({"epoch": 4, "train/acc": 0.745, "val/acc": 0.101}, 10, ema=True)
    assert "val/acc=0.101 is at chance (1/10) at epoch 4 while train/acc=0.745" in warning
    assert "callbacks.ema.decay" in warning and "BatchNorm" in warning
    assert "callbacks.ema" not in chance_warning({"epoch": 4, "train/acc": 0.745, "val/acc": 0.101}, 10, ema=False)


class _Forgetful(L_Callback := __import__("lightning").Callback):
    """Scrambles the weights before each validation and puts them back after: validation at chance, training
    learning, as a run whose evaluated model is not the trained one."""

    def on_validation_epoch_start(self, trainer, pl_module):
        self.saved = copy.deepcopy(pl_module.state_dict())
        with torch.no_grad():
            for parameter in pl_module.parameters():
                parameter.zero_()

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.load_state_dict(self.saved)


def test_a_run_validating_at_chance_while_training_learns_says_so(make_config, tmp_path, monkeypatch, caplog):
    import tinyvision.training as training

    real = training._callbacks
    monkeypatch.setattr(training, "_callbacks", lambda cfg, *rest: real(cfg, *rest) + [_Forgetful()])
    run_dir = tmp_path / "run"
    with caplog.at_level("WARNING", logger="tinyvision"):
        metrics = train(make_config("data=mnist", "model=convnet", "data.val_size=50", "trainer.max_epochs=3", "optimizer.lr=0.003",
                                    run_dir=run_dir))
    assert metrics["history"][-1]["train/acc"] > 0.5  # the fixture's classes are easy: training learns
    saved = json.loads((run_dir / "metrics.json").read_text())["warnings"]
    assert len(saved) == 1 and "is at chance (1/10) at epoch 3" in saved[0]  # the summary speaks of the end
    # logged once, as soon as two epochs in a row showed it
    assert len([r for r in caplog.records if "is at chance (1/10) at epoch" in r.getMessage()]) == 1


def test_a_healthy_run_has_no_warning(make_config, tmp_path):
    metrics = train(make_config("data=mnist", "model=convnet", "data.val_size=50", "trainer.max_epochs=2", "optimizer.lr=0.003",
                                run_dir=tmp_path / "run"))
    assert metrics["val/acc"] > 0.5 and metrics["warnings"] == []
