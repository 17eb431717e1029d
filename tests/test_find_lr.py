"""The learning-rate finder: Lightning's curve corrected, a suggestion or a plain no, and the command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from tinyvision.lr_find import BETA, corrected_curve, steepest_fall


def lightning_smoothing(raw: list[float]) -> list[float]:
    """What Lightning's finder records: a running average divided by 1 - beta^(step + 2)."""
    out, average = [], 0.0
    for index, loss in enumerate(raw):
        average = BETA * average + (1 - BETA) * loss
        out.append(average / (1 - BETA ** (index + 2)))
    return out


def test_the_curve_is_smoothed_again_with_the_right_bias_correction():
    raw = [2.3] * 30 + [2.3 - 0.05 * i for i in range(30)]
    lrs = [10 ** (-6 + 6 * i / 59) for i in range(60)]
    recorded = lightning_smoothing(raw)
    assert recorded[0] == pytest.approx(2.3 / 1.98, rel=1e-3)  # the first point shown at about half the loss
    _, corrected = corrected_curve(lrs, recorded)
    assert corrected[:30] == pytest.approx([2.3] * 30)  # a flat loss is flat again
    suggestion = steepest_fall(lrs, corrected)
    assert lrs[30] <= suggestion <= lrs[-1]  # where it falls


def test_no_suggestion_when_the_loss_never_falls():
    lrs = [10 ** (-6 + 6 * i / 59) for i in range(60)]
    assert steepest_fall(lrs, [2.0 + 0.01 * i for i in range(60)]) is None


@pytest.mark.slow
def test_find_lr_saves_the_plot_and_prints_the_command(data_root, tmp_path):
    """On the fixtures' easy classes the finder sees the loss fall and suggests a learning rate where it falls."""
    import json

    run_dir = tmp_path / "find"
    # ConvNet, not LeNet: in 30 steps LeNet's sigmoid layers barely move (its smoothed loss falls 0.06, within the
    # noise), while ConvNet's falls from 2.30 to about 1.45 before it diverges at the largest rates.
    result = subprocess.run([sys.executable, "find_lr.py", "model=convnet", "data.val_size=50", "lr_find.num_training=30",
                             f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "suggested learning rate" in result.stdout and "train with it: python train.py model=convnet" in result.stdout
    assert (run_dir / "lr_find.png").stat().st_size > 5000
    found = json.loads((run_dir / "lr_find.json").read_text())
    lrs, losses, suggestion = found["lr"], found["loss"], found["suggestion"]
    assert 1e-4 <= suggestion <= 0.1  # Adam's workable range here (the runs use 1e-3 to 3e-3), not an end of the sweep
    at = lrs.index(suggestion)
    assert min(losses[at:]) < losses[0] - 0.5  # past the suggestion the loss falls well below where it started
