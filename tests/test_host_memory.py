"""tinyvision.host_memory: freed tensor memory stays in the process for the next step instead of going back to the
kernel, observed through glibc's own accounting (mallinfo2) and the page faults of real training steps."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")

# A 16 MiB tensor, the size of a large activation: where glibc puts it, and what it keeps once it is freed.
BLOCK = """
import ctypes, sys, torch
from tinyvision.host_memory import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory()
mapped = libc.mallinfo2().hblkhd
block = torch.empty(4 * 1024 * 1024).fill_(1.0)
mapped = libc.mallinfo2().hblkhd - mapped
del block
print(applied, mapped / 2**20, libc.mallinfo2().fordblks / 2**20)
"""

# Training steps of seed 002's sigmoid LeNet at batch 256 on random images; the minor page faults a step over the
# last six (the first four fault the heap in).
STEPS = """
import resource, torch
from torch.nn import functional as F
from tinyvision.host_memory import keep_freed_memory
from tinyvision.models import LeNet
assert keep_freed_memory()
torch.manual_seed(0)
model = LeNet(in_channels=1, num_classes=10, image_size=28)
optimizer = torch.optim.SGD(model.parameters(), lr=0.9)
images, labels = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
for step in range(10):
    if step == 4:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 6)
"""


def run(code: str, keep: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TINYVISION_KEEP_FREED_MEMORY": keep})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_freed_block_stays_on_the_heap_and_the_switch_leaves_glibcs_defaults():
    applied, mapped_mib, free_mib = run(BLOCK, "1")
    assert applied == "True"
    assert float(mapped_mib) == 0  # served from the heap, not mmap'd
    assert float(free_mib) >= 16  # freed, and kept for the next allocation
    applied, mapped_mib, free_mib = run(BLOCK, "0")
    assert applied == "False"
    assert float(mapped_mib) >= 16  # glibc's default: its own mapping, unmapped again when freed
    assert float(free_mib) < 16


def test_training_steps_reuse_their_memory_without_page_faults():
    # With glibc's defaults such a step faults in thousands of pages (about 4,600 a LeNet step in bench/cpu_steps.py,
    # varying with glibc's own threshold adjustments, so not asserted here).
    # Kept: 0 in most runs, at most about 200 (one input-sized buffer some library maps for itself).
    assert float(run(STEPS, "1")[0]) < 500


def test_training_keeps_freed_memory(monkeypatch):
    """train() applies it before anything is built (the data, the model)."""
    from omegaconf import OmegaConf

    from tinyvision import training

    calls = []
    monkeypatch.setattr(training, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(training, "_train", lambda *args: calls.append("trained") or {})
    from tinyvision.slurm import SlurmSettings

    monkeypatch.setattr(training, "validate_train", lambda cfg: SimpleNamespace(slurm=SlurmSettings()))
    monkeypatch.setattr(training, "_checkpoint_to_resume", lambda cfg, run_dir: None)
    training.train(OmegaConf.create({"paths": {"output_dir": "unused"}}))
    assert calls == ["kept", "trained"]


def test_set_up_objects_are_out_of_the_collectors_sight_during_the_block_and_back_after():
    import gc

    from tinyvision.host_memory import set_up_objects_frozen

    assert gc.get_freeze_count() == 0
    existing = len(gc.get_objects())
    with set_up_objects_frozen():
        assert gc.get_freeze_count() >= existing  # a full collection now walks only what the block creates
        made = [[] for _ in range(1000)]
        assert all(gc.is_tracked(m) for m in made) and len(gc.get_objects()) < 2000 + 1000 * 2
    assert gc.get_freeze_count() == 0  # back: a sweep's next trial does not keep this one's leftovers


def test_fit_and_test_run_with_set_up_objects_frozen(monkeypatch, make_config):
    import gc

    from tinyvision import training

    seen = {}
    monkeypatch.setattr(training, "_fit", lambda *args: seen.setdefault("fit", gc.get_freeze_count()))
    monkeypatch.setattr(training, "_test_best_checkpoint",
                        lambda *args: (seen.setdefault("test", gc.get_freeze_count()), None) and (None, {}))
    monkeypatch.setattr(training, "_run_metrics", lambda *args: {})
    training.train(make_config("data=mnist", "logger=none", "trainer.max_epochs=1"))
    assert seen["fit"] > 10_000 and seen["test"] > 10_000 and gc.get_freeze_count() == 0
