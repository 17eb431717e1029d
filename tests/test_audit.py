"""The data audit: confident learning on cases whose answer is known, duplicates, and a k-fold sweep of a folder with
moved labels and planted duplicates, audited at the sweep's end and again by audit.py."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import torch

from conftest import ROOT, write_image_folder
from tinyvision.audit.confident import find_label_issues
from tinyvision.audit.duplicates import duplicate_pairs


def noisy_probabilities(true: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """A model that knows each image's true class, unsurely: 0.5-0.9 on it, the rest spread at random."""
    rng = np.random.default_rng(seed)
    rest = rng.dirichlet(np.ones(classes - 1), size=len(true))
    sure = rng.uniform(0.5, 0.9, size=len(true))
    probabilities = np.zeros((len(true), classes))
    for row, label in enumerate(true):
        others = [j for j in range(classes) if j != label]
        probabilities[row, others] = rest[row] * (1 - sure[row])
        probabilities[row, label] = sure[row]
    return probabilities


def test_confident_learning_finds_the_moved_labels_and_few_others():
    """A model unsure of its true classes (0.5-0.9): confident learning flags only moved labels, most of them (its
    confident joint counts the moved images that reach their class's threshold; cleanlab 2.9.0 flags the same images
    but for one of 1,000 in some draws, docs/design.md)."""
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, size=1000)
    probabilities = noisy_probabilities(true, 4, seed=1)
    given = true.copy()
    moved = rng.choice(1000, size=50, replace=False)
    given[moved] = (true[moved] + rng.integers(1, 4, size=50)) % 4
    for method, at_least in (("prune_by_noise_rate", 33), ("confident_learning", 20)):
        issues = find_label_issues(given, probabilities, method)
        found = set(issues.rows.tolist())
        assert len(found & set(moved.tolist())) >= at_least and not found - set(moved.tolist()), method
        assert (issues.suggested == true[issues.rows]).all()  # the suggestion is the true class
        assert list(issues.score) == sorted(issues.score, reverse=True)  # most likely wrong first
    assert len(find_label_issues(true, probabilities).rows) == 0  # every given label agrees with the model: none


def test_exact_and_near_duplicates_within_training_and_into_the_test():
    generator = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8, generator=generator)
    test = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=generator)
    train[7] = train[3]  # an exact copy
    train[9] = (train[4].int() + 1).clamp(max=255).to(torch.uint8)  # a brighter copy: the same difference hash
    test[2] = train[11]  # a training image in the test split: leakage
    pairs = duplicate_pairs(train, test)
    assert ("exact", "train", 3, "train", 7) in pairs and ("near", "train", 4, "train", 9) in pairs
    assert ("exact", "train", 11, "test", 2) in pairs and len(pairs) == 3


def fold_sweep(root, sweep, cache) -> subprocess.CompletedProcess:
    """A 3-fold sweep of a ConvNet on a folder of three classes, ending in its audit."""
    return subprocess.run(
        [sys.executable, "train.py", "-m", "data=folder", f"data.root={root}", "data.image_size=32", "data.folds=3",
         "data.fold=range(3)", "model=convnet", "trainer.max_epochs=6", "optimizer.lr=0.003", "callbacks=minimal",
         "logger=none", f"data.cache_dir={cache}", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_k_fold_sweep_of_a_folder_names_its_moved_labels_and_duplicates(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root / "train", classes=("ants", "bees", "wasps"), per_class=40, seed=3)
    write_image_folder(root / "test", classes=("ants", "bees", "wasps"), per_class=4, seed=4)
    moved = []
    for index, (source, target) in enumerate([("ants", "bees"), ("bees", "wasps"), ("wasps", "ants")] * 2):
        name = f"{index:03d}.png"
        shutil.move(root / "train" / source / name, root / "train" / target / f"moved_{name}")
        moved.append(f"{target}/moved_{name}")
    shutil.copy(root / "train" / "ants" / "010.png", root / "train" / "ants" / "copy_of_010.png")  # a duplicate
    shutil.copy(root / "train" / "bees" / "020.png", root / "test" / "bees" / "leaked.png")  # leakage into the test
    sweep = tmp_path / "sweep"
    result = fold_sweep(root, sweep, tmp_path / "cache")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "likely mislabeled" in result.stdout and f"{sweep}/label_issues.csv" in result.stdout.replace("\n", "")
    flagged = list(csv.DictReader((sweep / "label_issues.csv").open()))
    paths = [row["path"] for row in flagged]
    assert len(set(paths[:10]) & set(moved)) >= 5, paths  # the moved images rank first
    assert all(row["suggested"] != row["given"] for row in flagged)
    by_path = {row["path"]: row for row in flagged}
    assert by_path.get("bees/moved_000.png", {}).get("suggested") in (None, "ants")
    duplicates = list(csv.DictReader((sweep / "duplicates.csv").open()))
    pairs = {(row["first"], row["second"]) for row in duplicates}
    assert ("ants/010.png", "ants/copy_of_010.png") in pairs or ("ants/copy_of_010.png", "ants/010.png") in pairs
    assert any(row["second_split"] == "test" and row["first"] == "bees/020.png" for row in duplicates)
    assert (sweep / "label_issues.png").stat().st_size > 10_000
    summary = json.loads((sweep / "audit.json").read_text())
    assert summary["images"] == 121 and summary["class_counts"] == {"ants": 41, "bees": 40, "wasps": 40}

    again = subprocess.run([sys.executable, "audit.py", f"sweep={sweep}", "method=confident_learning", "top=8",
                            f"hydra.run.dir={tmp_path / 'audit'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((sweep / "audit.json").read_text())["method"] == "confident_learning"

    (sweep / "1" / "heldout.csv").unlink()  # a fold without its probabilities: refused, naming it
    refused = subprocess.run([sys.executable, "audit.py", f"sweep={sweep}", f"hydra.run.dir={tmp_path / 'audit2'}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "has no heldout.csv" in refused.stderr
    for argv, expected in ([f"sweep={tmp_path / 'nothing'}"], "is not a folder"), ([f"sweep={tmp_path}"], "holds no finished k-fold"):
        bad = subprocess.run([sys.executable, "audit.py", *argv, f"hydra.run.dir={tmp_path / 'audit3'}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and expected in bad.stderr, bad.stderr[-2000:]


def test_a_k_fold_sweep_of_a_folder_without_errors_flags_few(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root / "train", classes=("ants", "bees", "wasps"), per_class=40, seed=3)
    write_image_folder(root / "test", classes=("ants", "bees", "wasps"), per_class=4, seed=4)
    sweep = tmp_path / "sweep"
    result = fold_sweep(root, sweep, tmp_path / "cache")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((sweep / "audit.json").read_text())
    assert summary["images"] == 120 and summary["flagged"] <= 2  # of 120 correctly labelled images
    assert summary["duplicates"]["pairs"] == 0 and not summary["warnings"]
