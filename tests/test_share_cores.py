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
    registry.mkdir(mode=0o700, exist_ok=True)
    (registry / f"{process.pid}.cores").write_text(" ".join(map(str, cores)))
    return process


def test_a_run_takes_its_share_of_the_cores_and_takes_them_back_when_alone(machine):
    callback = ShareCores("auto")
    other = another_run(machine, [2, 3, 4, 5])  # overlaps ours (0-3)
    try:
        callback.setup(None, None, "fit")
        assert torch.get_num_threads() == 2  # four cores, two runs
        assert (machine / f"{share_cores.os.getpid()}.cores").read_text().split("\n")[0] == "0 1 2 3"
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

    assert validate_train(make_config("threads=1"), look_outside=False).threads == 1
    for wrong in (0, 99999999999):  # torch.set_num_threads overflows, or fails to start that many threads
        with pytest.raises(ConfigError, match=rf"^threads={wrong}: auto \(this machine's cores shared.* from 1 to "):
            validate_train(make_config(f"threads={wrong}"), look_outside=False)


def test_a_folder_another_user_could_have_made_or_a_link_is_not_used(machine):
    machine.mkdir(mode=0o777)
    machine.chmod(0o777)  # open to others: counts could be planted, files swapped for links
    callback = ShareCores("auto")
    torch.set_num_threads(1)
    callback.setup(None, None, "fit")
    assert torch.get_num_threads() == 1 and not list(machine.iterdir())
    machine.chmod(0o700)
    victim = machine.parent / "victim.txt"
    victim.write_text("precious")
    (machine / f"{share_cores.os.getpid()}.cores").symlink_to(victim)
    callback.setup(None, None, "fit")
    assert victim.read_text() == "precious" and callback._entry is None


def test_a_later_process_with_a_killed_runs_pid_does_not_count(machine):
    other = another_run(machine, [0, 1])
    try:
        (machine / f"{other.pid}.cores").write_text("0 1\n1")  # written by a process that started at tick 1
        callback = ShareCores("auto")
        callback.setup(None, None, "fit")
        assert torch.get_num_threads() == 4 and not (machine / f"{other.pid}.cores").exists()
        callback.teardown(None, None, "fit")
    finally:
        other.kill()
        other.wait()
