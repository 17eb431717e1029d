"""k-fold cross-validation (data.folds, data.fold): the folds are disjoint, cover the training split and are
stratified; a fold sweep's summary is the mean ± std of its folds' own metrics."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from test_compare_runs import write_job

from tinyvision.config import validate_train
from tinyvision.data.folds import stratified_folds
from tinyvision.errors import ConfigError
from tinyvision.sweep import collect, over_repeats, write_summary
from tinyvision.training import build


def test_folds_are_disjoint_cover_every_sample_and_hold_each_class_in_proportion():
    labels = torch.tensor([0] * 50 + [1] * 31 + [2] * 7 + [3] * 12)[torch.randperm(100, generator=torch.Generator().manual_seed(1))]
    fold_of = stratified_folds(labels, 5, torch.Generator().manual_seed(0))
    assert fold_of.shape == labels.shape and set(fold_of.tolist()) == set(range(5))  # every sample in exactly one fold
    sizes = torch.bincount(fold_of, minlength=5)
    assert int(sizes.max() - sizes.min()) <= 1 and int(sizes.sum()) == 100
    for label in range(4):  # each class dealt evenly: per fold, its count differs by at most one
        per_fold = torch.bincount(fold_of[labels == label], minlength=5)
        assert int(per_fold.max() - per_fold.min()) <= 1, (label, per_fold)
    again = stratified_folds(labels, 5, torch.Generator().manual_seed(0))
    other = stratified_folds(labels, 5, torch.Generator().manual_seed(1))
    assert torch.equal(fold_of, again) and not torch.equal(fold_of, other)  # seeded


def splits_of(make_config, *overrides: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    datamodule, _ = build(validate_train(make_config("data=mnist", *overrides)))
    datamodule.setup("fit")
    return datamodule.splits


def rows(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


def test_each_fold_validates_on_its_own_share_and_trains_on_the_rest(make_config):
    """The synthetic MNIST has 400 distinct training images: fold i's validation images, over i, are the whole
    training split, once each; each fold trains on the other folds; the test split is the same for every fold."""
    whole = splits_of(make_config, "data.val_size=1")
    every = rows(torch.cat([whole["train"][0], whole["val"][0]]))
    assert len(every) == 400
    folds = [splits_of(make_config, "data.folds=4", f"data.fold={i}") for i in range(4)]
    validated = [rows(fold["val"][0]) for fold in folds]
    assert sum(len(v) for v in validated) == 400 and set().union(*validated) == every  # disjoint, covering
    for fold, val in zip(folds, validated):
        assert rows(fold["train"][0]) == every - val
        assert torch.equal(fold["test"][0], whole["test"][0])  # the official test split untouched
        assert len(val) in (100,)  # 400 images dealt to 4 folds
        counts = torch.bincount(fold["val"][1], minlength=10)
        overall = torch.bincount(torch.cat([whole["train"][1], whole["val"][1]]), minlength=10)
        assert torch.all((counts - overall / 4).abs() <= 1)  # stratified
    again = splits_of(make_config, "data.folds=4", "data.fold=2")
    assert torch.equal(again["val"][0], folds[2]["val"][0])  # the same seed, the same folds


@pytest.mark.parametrize("overrides, message", [
    (["data.fold=2"], "data.fold=2: a fold of data.folds, which is null: set data.folds too"),
    (["data.folds=4", "data.fold=4"], "data.fold=4: a fold from 0 to 3 (data.folds=4)"),
    (["data.folds=1"], "data.folds=1: null (no cross-validation) or a whole number of folds, 2 or more"),
])
def test_a_fold_outside_the_folds_is_refused_naming_the_key(make_config, overrides, message):
    with pytest.raises(ConfigError, match=None) as refused:
        validate_train(make_config("data=mnist", *overrides))
    assert str(refused.value).startswith(message), str(refused.value)


def test_more_folds_than_training_images_is_refused(make_config):
    with pytest.raises(ConfigError) as refused:
        splits_of(make_config, "data.folds=401")
    assert str(refused.value).startswith("data.folds=401 does not fit the training split of mnist (400 images)")


def test_a_fold_sweep_summary_is_the_mean_and_std_of_its_folds(tmp_path: Path):
    sweep = tmp_path / "sweep"
    figures = {0: (0.80, 0.79), 1: (0.84, 0.81), 2: (0.78, 0.80)}
    for fold, (val, test) in figures.items():
        write_job(sweep, fold, ["data.folds=3", f"data.fold={fold}", "model=lenet"], val, test, 10.0 + fold)
    aggregated = over_repeats(collect(sweep))
    assert len(aggregated) == 1 and aggregated[0]["over"] == "folds" and aggregated[0]["n"] == 3
    vals, tests = [v for v, _ in figures.values()], [t for _, t in figures.values()]
    assert aggregated[0]["val/acc_best_mean"] == pytest.approx(statistics.fmean(vals))
    assert aggregated[0]["val/acc_best_std"] == pytest.approx(statistics.stdev(vals))
    assert aggregated[0]["test/acc_mean"] == pytest.approx(statistics.fmean(tests))
    write_summary(sweep, collect(sweep))
    summary = (sweep / "summary.md").read_text()
    assert "Over folds" in summary and f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals):.4f}" in summary
    over = [row for row in csv.DictReader((sweep / "summary.csv").open()) if row["status"] == "over folds"]
    assert len(over) == 1 and float(over[0]["test/acc_mean"]) == pytest.approx(statistics.fmean(tests))


@pytest.mark.slow
def test_a_k_fold_sweep_trains_every_fold_and_summarizes_them(data_root, tmp_path):
    """The README's command, on the synthetic MNIST: three folds, each its own run, one summary over them."""
    from test_use_a_model import run_script

    sweep = tmp_path / "folds"
    result = run_script("train.py", "-m", "data=mnist", "data.folds=3", "data.fold=range(3)", "trainer.max_epochs=1",
                        "callbacks=minimal", "logger=none", "trainer.accelerator=cpu", f"paths.data_dir={data_root}",
                        f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads((sweep / str(job) / "metrics.json").read_text()) for job in range(3)]
    folds = [yaml.safe_load((sweep / str(job) / ".hydra" / "config.yaml").read_text())["data"]["fold"] for job in range(3)]
    assert folds == [0, 1, 2]
    over = [row for row in csv.DictReader((sweep / "summary.csv").open()) if row["status"] == "over folds"]
    assert len(over) == 1 and over[0]["n"] == "3"
    assert float(over[0]["val/acc_best_mean"]) == pytest.approx(statistics.fmean(m["val/acc_best"] for m in metrics))
    assert float(over[0]["test/acc_mean"]) == pytest.approx(statistics.fmean(m["test/acc"] for m in metrics))
    assert "over folds" in result.stdout
