"""Where tinyvision's CPU training throughput goes against the raw loop: each suspect removed alone, at one and two
threads, every measurement in its own process, variants interleaved, the median of the repeats.

    python bench/cpu_gap.py [--repeats 3] [--workloads lenet,convnet]

Variants (training images/s of the last of 2 epochs; bench/bench.py's raw loop and tinyvision run):
  raw                     the floor: the same model, batch and optimizer over tensors normalized once
  raw|tinyvision (glibc malloc)  the same with TINYVISION_KEEP_FREED_MEMORY=0 (tinyvision.host_memory not applied)
  tinyvision              train.py's composition, default callbacks and TensorBoard
  - progress bar          without the Rich bar (and its refresh thread)
  - loggers, callbacks    logger=none callbacks=minimal: no TensorBoard, bar, pictures or model summary
At each of --threads (default: the machine's count, then 1) as OMP_NUM_THREADS. Prints a Markdown table for
BENCHMARKS.md. Needs the machine to itself: about 2 minutes a workload, thread count and repeat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (bench/bench.py: one measurement per process)

VARIANTS = {
    "raw": ("raw", []),
    "raw (glibc malloc)": ("raw", []),  # TINYVISION_KEEP_FREED_MEMORY=0: freed blocks go back to the kernel
    "tinyvision (glibc malloc)": ("tinyvision", []),
    "tinyvision": ("tinyvision", []),
    "- progress bar": ("tinyvision", ["~callbacks.progress_bar"]),
    "- loggers, callbacks": ("tinyvision", ["logger=none", "callbacks=minimal"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", default="lenet,convnet")
    parser.add_argument("--threads", default=f"{os.cpu_count()},1")
    parser.add_argument("--only", default=None, help="comma-separated variants (default: all)")
    parser.add_argument("--data-dir", default=os.environ.get("TINYVISION_DATA_DIR", str(bench.ROOT / "data")))
    args = parser.parse_args()
    args.device, args.extra = "cpu", []
    bench.ensure_data(args.data_dir)
    workloads, threads = args.workloads.split(","), [int(t) for t in args.threads.split(",")]
    variants = {name: VARIANTS[name] for name in args.only.split(",")} if args.only else VARIANTS
    results: dict[tuple, list[float]] = {}
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
        for workload in workloads:
            for count in threads:
                os.environ["OMP_NUM_THREADS"] = str(count)
                for name, (variant, overrides) in variants.items():
                    os.environ["TINYVISION_KEEP_FREED_MEMORY"] = "0" if "glibc" in name else "1"
                    last = bench.measure(variant, workload, args, 2, overrides)["epochs"][-1]
                    results.setdefault((workload, count, name), []).append(last["samples"] / last["train_seconds"])
    print(f"\n| workload | threads | variant | train images/s (median of {args.repeats}) | of raw | runs |")
    print("|---|---:|---|---:|---:|---|")
    for workload in workloads:
        for count in threads:
            floor = statistics.median(results[(workload, count, "raw")])
            for name in variants:
                runs = results[(workload, count, name)]
                median = statistics.median(runs)
                print(f"| {workload} | {count} | {name} | {median:,.0f} | {median / floor:.2f} | "
                      f"{', '.join(f'{r:,.0f}' for r in runs)} |")


if __name__ == "__main__":
    main()
