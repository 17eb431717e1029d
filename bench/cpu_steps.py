"""The CPU gap taken apart inside one process: the raw loop, then tinyvision's pieces added one at a time.

    python bench/cpu_steps.py [--workload lenet|convnet] [--rounds 7] [--steps 40] [--threads 2] [--profile]

Every variant trains the same architecture on Fashion-MNIST at the workload's batch size, in one process, in blocks of
``--steps`` steps (after warm-up steps of its own), the blocks interleaved round by round, so the machine's swings fall
on every variant alike; the figures are the median over rounds of a block's milliseconds per step, and the median over
rounds of each round's ratio to the raw loop (the machine drifts between rounds more than within one).

  raw            the floor (bench/bench.py's raw loop): images normalized once, float32 channels_last, indexed per batch
  + uint8 input  the classifier's forward on uint8 batches drawn by tinyvision's TensorBatches (normalize, NHWC copy)
  + metrics      ImageClassifier._step: the same plus the loss/accuracy metric updates and its cross-entropy settings
  Lightning      the same classifier and data module under a bare L.Trainer (no logger, checkpoint, bar or summary)
  tinyvision     the Trainer train.py builds: its callbacks, TensorBoard logger and checkpoint plugin
  - progress bar, - TensorBoard   the same without the progress bar's callback, or without the logger

``--profile`` prints torch.profiler's table of each variant's block (self CPU time by op) instead of timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (WORKLOADS, the raw loop's model)


def compose(workload: str, data_dir: str, run_dir: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    experiment, _, batch, *_ = bench.WORKLOADS[workload]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=[
            f"experiment={experiment}", "data=fashion", f"data.batch_size={batch}", f"paths.data_dir={data_dir}",
            f"paths.output_dir={run_dir}", "trainer.accelerator=cpu", "trainer.max_epochs=1000",
            "trainer.limit_val_batches=0", *bench.WORKLOAD_OVERRIDES.get(workload, [])])


class StepClock:
    """Times the training steps after the first ``warmup`` of a fit (a Lightning callback)."""

    def __init__(self, warmup: int):
        import lightning as L

        class Clock(L.Callback):
            def on_train_batch_start(clock, trainer, module, batch, batch_idx):  # noqa: N805
                if batch_idx == warmup:
                    clock.started = time.perf_counter()

            def on_train_end(clock, trainer, module):  # noqa: N805
                clock.stopped = time.perf_counter()

        self.callback = Clock()

    def seconds(self) -> float:
        return self.callback.stopped - self.callback.started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="lenet", choices=["lenet", "convnet", "linear", "lenet_b512"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rows", type=int, default=18, help="with --profile: the table's rows")
    parser.add_argument("--hooks", action="store_true", help="print Lightning's SimpleProfiler report of the "
                        "tinyvision variant's last block: what each hook and callback costs a step")
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's malloc thresholds as they are (tinyvision.host_memory not applied)")
    parser.add_argument("--no-freeze", action="store_true", help="leave set-up's objects to the garbage collector")
    parser.add_argument("--only", default=None, help="comma-separated variants to run (default: all)")
    parser.add_argument("--data-dir", default=str(bench.ROOT / "data"))
    args = parser.parse_args()

    import lightning as L
    import torch
    from torch.nn import functional as F

    from tinyvision.config import validate_train
    from tinyvision.host_memory import keep_freed_memory
    from tinyvision.trainer import make_trainer
    from tinyvision.training import _callbacks, _loggers, build

    if not args.glibc_default:
        keep_freed_memory()  # tinyvision's own setting, for every variant alike (raw included)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench.ensure_data(args.data_dir)
    _, architecture, batch, optimizer_name, lr, mean, std = bench.WORKLOADS[args.workload]
    run_dir = tempfile.mkdtemp(prefix="cpu_steps_")
    values = validate_train(compose(args.workload, args.data_dir, run_dir))
    L.seed_everything(0, verbose=False)
    datamodule, classifier = build(values)
    datamodule.setup("fit")
    images, labels = datamodule.splits["train"] if hasattr(datamodule, "splits") else (None, None)
    loader = datamodule.train_dataloader()

    # The raw loop's own model and data (bench.run_raw's CPU path).
    raw_x = ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    raw_model = bench.make_model(architecture, "cpu", workload=args.workload).to(memory_format=torch.channels_last)
    raw_opt = bench.make_optimizer(optimizer_name, lr, raw_model.parameters())

    def raw(steps: int) -> float:
        order = torch.randperm(len(raw_x)).split(batch)
        raw_model.train()
        for number, index in enumerate(order[: steps + args.warmup]):
            if number == args.warmup:
                started = time.perf_counter()
            raw_opt.zero_grad()
            F.cross_entropy(raw_model(raw_x[index]), labels[index]).backward()
            raw_opt.step()
        return time.perf_counter() - started

    manual_opt = bench.make_optimizer(optimizer_name, lr, classifier.parameters())

    def manual(steps: int, with_metrics: bool) -> float:
        classifier.train()
        for number, (x, y) in enumerate(iter(loader)):
            if number == args.warmup:
                started = time.perf_counter()
            if number == steps + args.warmup:
                break
            manual_opt.zero_grad()
            loss = classifier._step((x, y), "train")[0] if with_metrics else F.cross_entropy(classifier(x), y)
            loss.backward()
            manual_opt.step()
        return time.perf_counter() - started

    def lightning(steps: int, full: bool, without: tuple[str, ...] = ()) -> float:
        clock = StepClock(args.warmup)
        common = dict(max_steps=steps + args.warmup, limit_val_batches=0, num_sanity_val_steps=0)
        if full:
            trainer_settings = values.trainer.model_copy(update={**common, **({"profiler": "simple"} if args.hooks else {})})
            these = dataclasses.replace(values, trainer=trainer_settings,
                                        callbacks={k: v for k, v in values.callbacks.items() if k not in without},
                                        logger={} if "logger" in without else values.logger)
            trainer = make_trainer(these, _callbacks(these, None) + [clock.callback], _loggers(these, None))
        else:
            trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                callbacks=[clock.callback], **common)
        trainer.fit(classifier, datamodule=datamodule)
        if args.hooks and full:
            print(trainer.profiler.summary())
        return clock.seconds()

    variants = {
        "raw": raw,
        "+ uint8 input": lambda steps: manual(steps, False),
        "+ metrics": lambda steps: manual(steps, True),
        "Lightning": lambda steps: lightning(steps, False),
        "tinyvision": lambda steps: lightning(steps, True),
        "tinyvision - progress bar": lambda steps: lightning(steps, True, ("progress_bar",)),
        "tinyvision - TensorBoard": lambda steps: lightning(steps, True, ("logger",)),
    }
    if args.only:
        variants = {name: variants[name] for name in args.only.split(",")}
    if not args.no_freeze:
        gc.freeze()  # as train() does for its fit (tinyvision.host_memory): no full collection walks set-up's objects
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for round_number in range(args.rounds):
            for name, run in variants.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    run(args.steps)
                print(f"\n### {name}, round {round_number + 1}\n")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
        return
    per_step: dict[str, list[float]] = {name: [] for name in variants}
    faults: dict[str, list[float]] = {name: [] for name in variants}  # minor page faults a step (the allocator's work)
    for round_number in range(args.rounds):
        for name, run in variants.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            per_step[name].append(run(args.steps) / args.steps * 1000)
            faults[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (args.steps + args.warmup))
        print(f"round {round_number + 1}/{args.rounds}: "
              + ", ".join(f"{name} {ms[-1]:.2f}" for name, ms in per_step.items()), flush=True)
    floor = statistics.median(per_step["raw"])
    print(f"\n{args.workload}, batch {batch}, {torch.get_num_threads()} threads, {args.steps} steps a block, "
          f"median of {args.rounds} rounds\n")
    print("| variant | ms per step | over raw, ms | images/s | of raw (median of rounds' ratios) | page faults a step | "
          "blocks (ms per step) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, runs in per_step.items():
        median = statistics.median(runs)
        # of raw: the median over rounds of each round's own ratio, which the machine's drift between rounds leaves alone
        ratio = statistics.median(raw / mine for raw, mine in zip(per_step["raw"], runs))
        print(f"| {name} | {median:.2f} | {median - floor:+.2f} | {batch / median * 1000:,.0f} | {ratio:.2f} | "
              f"{statistics.median(faults[name]):,.0f} | "
              f"{', '.join(f'{r:.2f}' for r in runs)} |")


if __name__ == "__main__":
    main()
