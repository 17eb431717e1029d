"""What the training process does with its host memory: freed blocks kept for the next step, and the objects of
set-up left out of Python's garbage collections.

**Freed blocks.** A training step on the CPU allocates and frees the same few megabyte-sized tensors (activations, their
gradients) every step. glibc's malloc serves blocks that large with mmap and returns them with munmap when they
are freed, or trims them off the heap's top, so every step touches fresh pages: about 4,600 page faults a LeNet
step at batch 256, and the kernel zeroing 18 MB of pages per step (BENCHMARKS.md, bench/cpu_steps.py). Raising
malloc's mmap and trim thresholds keeps those blocks on the heap: the next step reuses them, with no fault at all.

PyTorch's CPU performance guide gets the same by preloading jemalloc or tcmalloc (``LD_PRELOAD``), which needs a
system library and a wrapper around the command; glibc's own ``mallopt`` does it from inside the process. What it
costs: the process keeps its peak heap until it exits. ``TINYVISION_KEEP_FREED_MEMORY=0`` leaves glibc's defaults.

**Set-up objects.** A run holds about half a million Python objects once torch, Lightning, Hydra and the data are
loaded, and Python's oldest-generation collection walks all of them: 0.3-0.4 s, once or twice during a short fit
(bench/cpu_steps.py's notes in BENCHMARKS.md). None of them is garbage the run could free, so ``set_up_objects_frozen``
moves them out of the collector's sight (``gc.freeze``) for the fit and the test, and back afterwards, so that a
sweep running many trials in one process does not keep each trial's leftovers.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Iterator

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): blocks up to 32 MiB come from the heap.
MMAP_THRESHOLD = 32 * 1024 * 1024
# mallopt takes a C int: about 2 GiB of free heap top is kept before any is trimmed.
TRIM_THRESHOLD = 2**31 - 1
ENV_SWITCH = "TINYVISION_KEEP_FREED_MEMORY"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once for this process; True when they are in force (Linux with glibc, not switched
    off by ``TINYVISION_KEEP_FREED_MEMORY=0``). Elsewhere (macOS, musl, Windows) nothing changes."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; setting either threshold also stops glibc adjusting them itself.
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


@contextlib.contextmanager
def set_up_objects_frozen() -> Iterator[None]:
    """Inside the block the garbage collector leaves alone every object that exists when it starts."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
