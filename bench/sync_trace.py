"""Show whether a training step reads anything back from the device: a torch.profiler trace of steps.

    python bench/sync_trace.py                  # CPU: counts item()/is_nonzero reads per step
    python bench/sync_trace.py --device cuda    # GPU: also counts device-to-host copies (Memcpy DtoH)

The run is seed 003 §12.3's net and optimizer (cifar_net_v3, SGD with momentum) with crop and flip.
Adam would add reads of its step counters, which live on the CPU and so do not stall a GPU.

A value read on the host (``.item()``, ``bool(tensor)``, ``.tolist()``) runs ``aten::_local_scalar_dense``
or ``aten::is_nonzero``; on a GPU each one waits for every queued kernel and copies device to host. The
profiled steps are chosen between two loss checks (StopOnNonFiniteLoss reads its record once every
``check_every_n_steps``), so a clean step shows zero of each. The trace is written for chrome://tracing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READS = ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::item")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--steps", type=int, default=10, help="steps profiled")
    parser.add_argument("--trace", default=str(ROOT / "outputs" / "sync_trace.json"))
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides")
    args = parser.parse_args()

    import lightning as L
    from hydra import compose, initialize_config_dir
    from torch.profiler import ProfilerActivity, profile, schedule

    sys.path.insert(0, str(ROOT / "src"))
    from tinyvision.training import train

    wait, warmup = 20, 5  # steps 1-25 unprofiled: warm-up, the first loss check and the input grid are behind
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    profiler = profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=args.steps),
                       with_stack=True, acc_events=True)

    class Steps(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 0:
                profiler.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            profiler.step()
            if trainer.global_step == wait + warmup + args.steps:
                profiler.stop()
                trainer.should_stop = True

    with tempfile.TemporaryDirectory() as run_dir, initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "model=cifar_net_v3", "data=fashion", "optimizer=sgd", "optimizer.momentum=0.9",
            f"paths.data_dir={args.data_dir}", f"paths.output_dir={run_dir}",
            f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", "trainer.max_epochs=1",
            "data.augment.crop_padding=2", "data.augment.horizontal_flip=0.5", "logger=none",
            "callbacks.stop_on_non_finite_loss.check_every_n_steps=1000",
            "callbacks.stop_on_non_finite_loss.read_on_cpu=false",  # the device record, as on a GPU, on any device
            *args.overrides,
        ])
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.callbacks.profile_steps = {"_target_": "__main__.Steps"}
        globals()["Steps"] = Steps
        train(cfg)

    reads = Counter()
    copies = Counter()
    where = Counter()
    for event in profiler.events():
        if event.name in READS:
            reads[event.name] += 1
            frames = [f for f in (event.stack or []) if "site-packages" not in f and "profiler" not in f]
            where[frames[0] if frames else (event.stack or ["?"])[0]] += 1
        if "Memcpy DtoH" in event.name or ("cudaMemcpy" in event.name and "DtoH" in event.name):
            copies[event.name] += 1
    Path(args.trace).parent.mkdir(parents=True, exist_ok=True)
    profiler.export_chrome_trace(args.trace)
    result = {"device": args.device, "steps_profiled": args.steps, "host_reads": dict(reads),
              "device_to_host_copies": dict(copies), "reads_from": dict(where.most_common(10)), "trace": args.trace}
    print("SYNC " + json.dumps(result))
    print(f"{args.steps} training steps profiled on {args.device}: {sum(reads.values())} host reads, "
          f"{sum(copies.values())} device-to-host copies; trace: {args.trace}")


if __name__ == "__main__":
    main()
