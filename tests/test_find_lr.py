"""The learning-rate finder: Lightning's curve corrected, a suggestion or a plain no, and the command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from find_lr import BETA, corrected_curve, steepest_fall  # noqa: E402


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
    run_dir = tmp_path / "find"
    result = subprocess.run([sys.executable, "find_lr.py", "model=lenet", "data.val_size=50", "lr_find.num_training=30",
                             f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert (run_dir / "lr_find.png").stat().st_size > 5000 and (run_dir / "lr_find.json").is_file()
    if result.returncode == 0:
        assert "suggested learning rate" in result.stdout and "train with it: python train.py model=lenet" in result.stdout
    else:  # a plain no, not a traceback
        assert result.returncode == 1 and "no learning rate could be suggested" in result.stdout, result.stderr[-2000:]
