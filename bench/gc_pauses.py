"""Python's garbage collections during a tinyvision fit: how many of each generation, and the seconds they take, with
set-up's objects frozen out of the collector's sight (train()'s default, tinyvision.host_memory) and without.

    python bench/gc_pauses.py [--repeats 3] [--workload lenet]

Each measurement is bench/bench.py's tinyvision run (2 epochs of the workload on Fashion-MNIST) in its own process,
the two variants interleaved; gc.callbacks time every collection that starts inside trainer.fit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def child(frozen: bool, workload: str, data_dir: str) -> None:
    import contextlib
    import gc

    from tinyvision import training

    collections = {generation: [0, 0.0] for generation in range(3)}
    clock, inside = {}, {"fit": False}

    def timed(phase: str, info: dict) -> None:
        if not inside["fit"]:
            return
        if phase == "start":
            clock["started"] = time.perf_counter()
        else:
            collections[info["generation"]][0] += 1
            collections[info["generation"]][1] += time.perf_counter() - clock["started"]

    gc.callbacks.append(timed)
    fit = training._fit

    def fit_timed(*args, **kwargs):
        inside["fit"] = True
        try:
            return fit(*args, **kwargs)
        finally:
            inside["fit"] = False

    training._fit = fit_timed
    if not frozen:
        training.set_up_objects_frozen = contextlib.nullcontext
    result = bench.run_tinyvision(workload, 2, data_dir, "cpu", None, [])
    last = result["epochs"][-1]
    print("GC " + json.dumps({"collections": collections, "objects": len(gc.get_objects()),
                              "fit_seconds": last["elapsed"], "images_per_s": last["samples"] / last["train_seconds"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workload", default="lenet")
    parser.add_argument("--data-dir", default=str(bench.ROOT / "data"))
    parser.add_argument("--child", choices=["frozen", "not frozen"])
    args = parser.parse_args()
    if args.child:
        return child(args.child == "frozen", args.workload, args.data_dir)
    bench.ensure_data(args.data_dir)
    print(f"| {args.workload} | set-up objects | gen-0 collections (s) | gen-1 (s) | gen-2 (s) | fit s | train images/s (epoch 2) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for _ in range(args.repeats):
        for variant in ("not frozen", "frozen"):
            done = subprocess.run([sys.executable, __file__, "--child", variant, "--workload", args.workload,
                                   "--data-dir", args.data_dir], capture_output=True, text=True, cwd=bench.ROOT)
            lines = [line for line in done.stdout.splitlines() if line.startswith("GC ")]
            if done.returncode != 0 or not lines:
                raise RuntimeError(done.stderr[-3000:])
            measured = json.loads(lines[-1][3:])
            gens = " | ".join(f"{n} ({s:.3f})" for n, s in measured["collections"].values())
            print(f"| | {variant} | {gens} | {measured['fit_seconds']:.2f} | {measured['images_per_s']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
