"""The benchmark and the reproduction scripts run end to end on tiny settings (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # trains runs in subprocesses: make test-fast leaves these out


def test_benchmark_runs_end_to_end(data_root, tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [sys.executable, "bench/bench.py", "--repeats", "1", "--epochs", "1", "--workloads", "lenet",
         "--options", "channels_last", "--target-epochs", "1", "--data-dir", str(data_root), "--out", str(out),
         "--extra", "data.val_size=50"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    for row in ("| lenet | tutorial |", "| lenet | raw |", "| lenet | tinyvision |", "| lenet | channels_last |"):
        assert row in report
    assert "Time to the seed's 0.804" in report and "| tutorial |" in report
    assert "## Whole process" in report and "| tinyvision trainer=debug |" in report


def test_recipes_write_their_sections_of_results_from_the_runs(data_root, tmp_path):
    """Each mode rewrites its own section (full data, a training subset) and keeps the other; every figure in the
    table is the run's own metrics.json value."""
    out = tmp_path / "RESULTS.md"
    common = ["--tiny", "--data-dir", str(data_root), "--out", str(out), "--runs", str(tmp_path / "runs")]
    for extra in (["--recipes", "lenet_fashion,cifar10_fast"], ["--recipes", "lenet_fashion", "--train-size", "100",
                                                                "--val-size", "50"]):
        result = subprocess.run([sys.executable, "bench/recipes.py", *common, *extra], cwd=ROOT, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    assert report.count("<!-- recipes: full -->") == 1 and report.count("<!-- recipes: 100-image -->") == 1
    assert "### cifar10_fast" in report and "data.channels=3" in report and "| tutorial | 0.168 |" in report
    assert (tmp_path / "results" / "lenet_fashion.png").stat().st_size > 1000
    runs = sorted((tmp_path / "runs").glob("*/*/metrics.json"))
    assert len(runs) == 3
    first = json.loads(next(r for r in runs if r.parent.name == "lenet_fashion").read_text())  # the full-data mode's
    assert f"| lenet_fashion | Fashion-MNIST | {first['history'][0]['train_samples']:,} | 1 | {first['test/acc']:.4f} |" in report


def test_a_training_step_reads_nothing_back_from_the_device(data_root, tmp_path):
    """The profiler sees no item()/bool() read in the steps between two loss checks (on a GPU each would
    be a host synchronisation); a NaN check or progress-bar value read every step would show here."""
    trace = tmp_path / "trace.json"
    result = subprocess.run(
        [sys.executable, "bench/sync_trace.py", "--data-dir", str(data_root), "--trace", str(trace),
         "data.batch_size=8", "data.val_size=50"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("SYNC "))
    report = json.loads(line[len("SYNC "):])
    assert report["steps_profiled"] == 10 and report["host_reads"] == {}, report
    assert trace.stat().st_size > 10_000  # the trace holds the profiled steps' operators
