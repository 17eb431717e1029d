"""ShareCores: a training process gives PyTorch its share of the cores that other live runs train on too, takes them
back when it is alone again, and leaves a thread count somebody chose (OMP_NUM_THREADS, threads=N) as it is."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tinyvision.callbacks import share_cores
from tinyvision.callbacks.share_cores import ShareCores


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A registry of its own and four cores (0-3) for this process, whatever this machine has."""
    monkeypatch.setattr(share_cores, "registry", lambda: tmp_path / "registry")
    monkeypatch.setattr(share_cores, "own_cores", lambda: frozenset(range(4)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield tmp_path / "registry"
    torch.set_num_threads(before)


def another_run(registry, cores) -> subprocess.Popen:
    """A live process registered as training on ``cores``."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    registry.mkdir(exist_ok=True)
    (registry / f"{process.pid}.cores").write_text(" ".join(map(str, cores)))
    return process


def test_a_run_takes_its_share_of_the_cores_and_takes_them_back_when_alone(machine):
    callback = ShareCores("auto")
    other = another_run(machine, [2, 3, 4, 5])  # overlaps ours (0-3)
    try:
        callback.setup(None, None, "fit")
        assert torch.get_num_threads() == 2  # four cores, two runs
        assert (machine / f"{share_cores.os.getpid()}.cores").read_text() == "0 1 2 3"
    finally:
        other.kill()
        other.wait()
    assert callback.share() == 4 and torch.get_num_threads() == 4  # the other ended: its file is cleared away
    assert not (machine / f"{other.pid}.cores").exists()
    torch.set_num_threads(3)
    callback.teardown(None, None, "fit")
    assert not list(machine.iterdir()) and torch.get_num_threads() == callback._before


def test_runs_on_other_cores_do_not_count(machine):
    other = another_run(machine, [8, 9])  # a SLURM task bound to other cores of the node
    try:
        callback = ShareCores("auto")
        callback.setup(None, None, "fit")
        assert torch.get_num_threads() == 4
        callback.teardown(None, None, "fit")
    finally:
        other.kill()
        other.wait()


def test_a_given_thread_count_is_kept(machine, monkeypatch):
    other = another_run(machine, [0, 1])
    try:
        callback = ShareCores(3)
        callback.setup(None, None, "fit")
        assert torch.get_num_threads() == 3 and not (machine / f"{share_cores.os.getpid()}.cores").exists()
        callback.teardown(None, None, "fit")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # joblib's loky, or the user: their choice
        torch.set_num_threads(1)
        ShareCores("auto").setup(None, None, "fit")
        assert torch.get_num_threads() == 1
    finally:
        other.kill()
        other.wait()


def test_threads_is_checked(make_config):
    from tinyvision.config import validate_train
    from tinyvision.errors import ConfigError

    assert validate_train(make_config("threads=2"), look_outside=False).threads == 2
    with pytest.raises(ConfigError, match=r"^threads=0: auto \(this machine's cores shared"):
        validate_train(make_config("threads=0"), look_outside=False)
