"""The evaluation gap taken apart inside one process: the raw loop's evaluation, then tinyvision's pieces added one at
a time.

    python bench/eval_steps.py [--workload lenet|convnet] [--rounds 7] [--threads 2]

Every variant evaluates the same trained-for-nothing network on the 10,000 Fashion-MNIST test images, once a block,
the blocks interleaved round by round as bench/cpu_steps.py does for training; the figures are the median over rounds
of a block's seconds (for the Lightning variants: the test epoch, as metrics.json's ``test_seconds`` counts it), and
the median of each round's ratio to the raw evaluation. bench/bench.py's "eval s" of
tinyvision is the test epoch of the final test (``metrics.json``'s ``test_seconds``), of the raw loop its ``accuracy``.

  raw at 1024       the floor (bench/bench.py's raw evaluation): images normalized once, float32 channels_last, batches
                    of 1024, argmax against the labels
  raw at eval batch the same at tinyvision's evaluation batch (data.eval_batch_size: the training batch by default)
  + uint8 input     the classifier's forward on uint8 batches of tinyvision's test loader (normalize, NHWC copy)
  + metrics         ImageClassifier.test_step: the same plus the loss and accuracy metric updates
  Lightning         the same classifier and data module under a bare L.Trainer's test (no logger, bar or callbacks)
  tinyvision        the Trainer train.py builds, its callbacks (the per-class test report, the bar) and loggers
  - test report     the same without the TestReport callback (the per-class figures and the confusion matrix)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_steps import compose  # noqa: E402  (the workload's train config)

import bench  # noqa: E402  (WORKLOADS, the raw loop's model and evaluation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="lenet", choices=["lenet", "convnet", "linear", "lenet_b512"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma-separated variants to run (default: all)")
    parser.add_argument("--data-dir", default=str(bench.ROOT / "data"))
    args = parser.parse_args()

    import lightning as L
    import torch

    from tinyvision.callbacks import TestReport
    from tinyvision.config import validate_train
    from tinyvision.host_memory import keep_freed_memory
    from tinyvision.trainer import make_trainer
    from tinyvision.training import _callbacks, _loggers, build

    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench.ensure_data(args.data_dir)
    _, architecture, batch, *_, mean, std = bench.WORKLOADS[args.workload]
    values = validate_train(compose(args.workload, args.data_dir, tempfile.mkdtemp(prefix="eval_steps_")))
    eval_batch = values.data.eval_batch_size
    L.seed_everything(0, verbose=False)
    datamodule, classifier = build(values)
    datamodule.setup("test")
    images, labels = datamodule.splits["test"]
    loader = datamodule.test_dataloader()

    raw_x = ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    raw_model = bench.make_model(architecture, "cpu", workload=args.workload).to(memory_format=torch.channels_last)

    def raw(size: int) -> float:
        started = time.perf_counter()
        bench.accuracy(raw_model, ((raw_x[i:i + size], labels[i:i + size]) for i in range(0, len(raw_x), size)), "cpu")
        return time.perf_counter() - started

    def manual(with_metrics: bool) -> float:
        classifier.eval()
        started = time.perf_counter()
        with torch.inference_mode():
            for number, (x, y) in enumerate(loader):
                if with_metrics:
                    classifier.test_step((x, y), number)
                else:
                    (classifier(x).argmax(1) == y).sum().item()
        return time.perf_counter() - started

    class EpochClock(L.Callback):
        """The test epoch's seconds, as tinyvision's metrics.json counts them (test_seconds)."""

        def on_test_epoch_start(self, trainer, module) -> None:
            self.started = time.perf_counter()

        def on_test_epoch_end(self, trainer, module) -> None:
            self.seconds = time.perf_counter() - self.started

    whole_calls: dict[str, list[float]] = {}

    def lightning(name: str, full: bool, without: tuple[type, ...] = ()) -> float:
        clock = EpochClock()
        if full:
            callbacks = [c for c in _callbacks(values, None) if not isinstance(c, without)]
            trainer = make_trainer(values, [*callbacks, clock], _loggers(values, None))
        else:
            trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=[clock])
        started = time.perf_counter()
        trainer.test(classifier, datamodule=datamodule, verbose=False)
        whole_calls.setdefault(name, []).append(time.perf_counter() - started)
        return clock.seconds

    variants = {
        "raw at 1024": lambda: raw(1024),
        f"raw at eval batch ({eval_batch})": lambda: raw(eval_batch),
        "+ uint8 input": lambda: manual(False),
        "+ metrics": lambda: manual(True),
        "Lightning": lambda: lightning("Lightning", False),
        "tinyvision": lambda: lightning("tinyvision", True),
        "tinyvision - test report": lambda: lightning("tinyvision - test report", True, (TestReport,)),
    }
    if args.only:
        variants = {name: run for name, run in variants.items() if name.split(" (")[0] in args.only.split(",")}
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    for run in variants.values():  # warm-up: the first pass of each builds its kernels' caches and the loaders
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(args.rounds):
        for name, run in variants.items():
            seconds[name].append(run())
        print(f"round {round_number + 1}/{args.rounds}: " + ", ".join(f"{n} {s[-1]:.3f}" for n, s in seconds.items()),
              flush=True)
    floor_name = next(iter(seconds))
    floor = statistics.median(seconds[floor_name])
    print(f"\n{args.workload}, {len(images):,} test images, evaluation batch {eval_batch}, {torch.get_num_threads()} "
          f"threads, median of {args.rounds} rounds\n")
    print(f"| variant | seconds | over {floor_name}, s | images/s | speed of {floor_name} (median of rounds' ratios) | "
          "blocks (s) |")
    print("|---|---:|---:|---:|---:|---|")
    for name, runs in seconds.items():
        median = statistics.median(runs)
        ratio = statistics.median(raw_s / mine for raw_s, mine in zip(seconds[floor_name], runs))
        print(f"| {name} | {median:.3f} | {median - floor:+.3f} | {len(images) / median:,.0f} | {ratio:.2f} | "
              f"{', '.join(f'{r:.3f}' for r in runs)} |")
    print("\nThe Lightning variants' whole trainer.test call (the Trainer's set-up, the loggers' files, the test report's "
          "files after the epoch), median seconds: "
          + ", ".join(f"{name} {statistics.median(calls[1:] or calls):.3f}" for name, calls in whole_calls.items()))


if __name__ == "__main__":
    main()
