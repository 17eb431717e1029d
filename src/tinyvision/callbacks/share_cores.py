"""The CPU cores shared among the runs that train on them at once.

PyTorch gives each process one thread per core. Two runs on one machine (two commands, a sweep's jobs, the ranks
of a DDP run on the CPU) then run twice as many threads as there are cores, and each waits on the other's: measured
on two cores (BENCHMARKS.md, the host-bound section), two linear classifiers side by side took 11-13 ms a step with
two threads each and 2.7-3.6 ms with one. ``ShareCores`` registers each training process with the cores it may run
on (``os.sched_getaffinity``: a SLURM task's own) in a folder of this machine, and gives PyTorch its share: the
cores divided by the live runs whose cores overlap its own, looked at again every ``CHECK_EVERY`` steps, so that a
run alone again gets its cores back. No library does this: joblib's loky sets ``OMP_NUM_THREADS`` for its own
workers only, and torch reads that variable once, at start-up. A process started with ``OMP_NUM_THREADS`` set (by
loky, SLURM's ``--cpus-per-task`` scripts, the user) keeps it: that is somebody's choice.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

import lightning as L
import torch

CHECK_EVERY = 100  # training steps between two looks at the other runs (a look costs a few file reads)


def registry() -> Path:
    """The folder where this machine's training processes note their cores (one per user: theirs to write)."""
    return Path(tempfile.gettempdir()) / f"tinyvision-cores-{os.getuid()}"


def own_cores() -> frozenset[int]:
    return frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset(range(os.cpu_count() or 1))


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks after boot, from /proc), or "" where that cannot be read: with the pid
    it names one process, so a killed run's file is not taken for a later process given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with the same pid: not the run that wrote the file
        return False
    return not started or _started(pid) in ("", started)


def private_folder(folder: Path) -> bool:
    """``folder`` made if missing, and this user's alone: a folder in /tmp that another user made first (or a link)
    could feed this run false counts, or turn its writes into writes to another file."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def sharing(cores: frozenset[int], folder: Path) -> int:
    """How many live registered processes run on any of ``cores`` (this one included once it is registered); the
    files of processes that ended without removing theirs (killed) are removed."""
    count = 0
    for entry in folder.glob("*.cores"):
        try:
            pid = int(entry.stem)
            cores_line, _, started = entry.read_text().partition("\n")
            theirs = {int(core) for core in cores_line.split()}
        except (ValueError, OSError):  # a file being written, or not ours
            continue
        if not _alive(pid, started.strip()):
            with contextlib.suppress(OSError):
                entry.unlink()
            continue
        count += bool(theirs & cores)
    return count


class ShareCores(L.Callback):
    """PyTorch's threads set to this run's share of its cores (``threads: auto``), or to a given number."""

    def __init__(self, threads: int | str = "auto"):
        self.threads = threads
        self.cores = own_cores()
        self.folder = registry()
        self._entry: Path | None = None
        self._before = torch.get_num_threads()
        self._steps = 0

    @property
    def decides(self) -> bool:
        return self.threads == "auto" and "OMP_NUM_THREADS" not in os.environ

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._before = torch.get_num_threads()
        if not self.decides:
            if isinstance(self.threads, int):
                torch.set_num_threads(self.threads)
            return
        if not private_folder(self.folder):  # the run keeps PyTorch's threads
            return
        entry = self.folder / f"{os.getpid()}.cores"
        try:  # never through a link
            descriptor = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(" ".join(map(str, sorted(self.cores))) + "\n" + _started(os.getpid()))
        except OSError:
            return
        self._entry = entry
        self.share()

    def share(self) -> int:
        """Set and return this run's threads: its cores divided by the runs on them (at least one)."""
        threads = max(1, len(self.cores) // max(1, sharing(self.cores, self.folder)))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._steps += 1
        if self._entry is not None and self._steps % CHECK_EVERY == 0:
            self.share()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._entry is not None:
            self.share()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._entry is not None:
            with contextlib.suppress(OSError):
                self._entry.unlink()
            self._entry = None
        torch.set_num_threads(self._before)
