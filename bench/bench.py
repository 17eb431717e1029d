"""Speed of tinyvision against the tutorials' loop and a raw PyTorch loop, written to BENCHMARKS.md.

    python bench/bench.py                 # the full benchmark on this machine (make bench)
    python bench/bench.py --device cuda   # the same on a GPU, data resident on the GPU

Each measurement runs in its own process (clean memory peak, no shared caches). The variants are
interleaved within each repeat and the median over repeats is reported:

  tutorial    torchvision dataset + ToTensor/Normalize + DataLoader + hand-written loop (seeds 000/002)
  raw         the same model, batch size and optimizer over tensors preloaded once (the Python floor)
  tinyvision  train.py's composition and Lightning Trainer, default logging and progress bar
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The seed recipes, on Fashion-MNIST: name -> (experiment, architecture, batch, optimizer, lr, mean, std)
WORKLOADS = {
    "lenet": ("lenet_fashion", "LeNet", 256, "SGD", 0.9, 0.0, 1.0),  # seed 002
    "convnet": ("convnet_mnist", "ConvNet", 512, "Adam", 0.001, 0.1307, 0.3081),  # seed 000, on Fashion-MNIST
    # seed 003 §12.3 (SGD 0.01 momentum 0.9, crop [0,2,3,4] + flip) on CIFAR-shaped data: Fashion-MNIST made
    # 3×32×32 at load time (CIFAR-10 itself cannot be downloaded on the benchmark machines)
    "cifar_v3_b32": ("cifar_net_v3", "CifarNetV3", 32, "SGD-momentum", 0.01, 0.0, 1.0),
    "cifar_v3_b512": ("cifar_net_v3", "CifarNetV3", 512, "SGD-momentum", 0.01, 0.0, 1.0),
    # The host-bound regime: models whose arithmetic is so small that a step is mostly the host's Python work
    "linear": ("mlp_mnist", "MLP", 512, "Adam", 0.001, 0.5, 0.5),  # a linear classifier: the MLP without hidden layers
    "lenet_b512": ("lenet_fashion", "LeNet", 512, "SGD", 0.9, 0.0, 1.0),
}
# What a workload changes in its experiment (tinyvision's overrides) and in the raw loop's model (its arguments)
WORKLOAD_OVERRIDES = {"linear": ["model.hidden=[]", "optimizer=adam", "~optimizer.momentum", "optimizer.lr=0.001"]}
WORKLOAD_MODEL_ARGS = {"linear": {"hidden": []}}
CIFAR_SHAPED = ["data=fashion", "data.channels=3", "data.image_size=32"]  # tinyvision overrides for cifar_v3_*
CIFAR_CROP = [0, 2, 3, 4]
# Speed options of the tinyvision path, each measured on and off: name -> (overrides when on, when off).
# An empty list is the defaults (channels_last on, 32-bit, no compile, evaluation at the training batch
# size): that state reuses the plain tinyvision measurement of the same repeat instead of running it again.
OPTIONS = {
    "channels_last": ([], ["model.channels_last=false"]),
    "bf16-mixed": (["trainer.precision=bf16-mixed"], []),
    "compile": (["model.compile=true"], []),
    "eval batch 1024": (["data.eval_batch_size=1024"], []),
    "all three": (["trainer.precision=bf16-mixed", "model.compile=true"],  # channels_last is on by default
                  ["model.channels_last=false"]),
    # What the default callbacks cost a training epoch (not speed options: each is measured against its removal)
    "progress bar": ([], ["~callbacks.progress_bar"]),
    "loss check": ([], ["~callbacks.stop_on_non_finite_loss"]),
    "pictures": ([], ["~callbacks.pictures"]),
}
# The whole process, as a user runs it: python train.py experiment=lenet_fashion trainer.max_epochs=4
PROCESS_EPOCHS = 4


# ---------------------------------------------------------------- one measurement (child process)


def peak_memory_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cifar_shaped(workload: str) -> bool:
    return workload.startswith("cifar_")


def make_model(architecture: str, device: str, channels: int = 1, size: int = 28, workload: str | None = None):
    import torch

    from tinyvision import models

    torch.manual_seed(0)
    arguments = WORKLOAD_MODEL_ARGS.get(workload, {})
    return getattr(models, architecture)(in_channels=channels, num_classes=10, image_size=size, **arguments).to(device)


def make_optimizer(name: str, lr: float, params):
    import torch

    if name == "SGD-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.SGD(params, lr=lr) if name == "SGD" else torch.optim.Adam(params, lr=lr)


FIRST_STEP_AT: list[float] = []  # Unix time of the hand-written loops' first training step (start-up ends there)


def loop(model, optimizer, batches, device: str) -> int:
    """One training epoch as the tutorials write it; returns the number of images seen."""
    import torch.nn.functional as F

    model.train()
    seen = 0
    for images, labels in batches:
        if not FIRST_STEP_AT:
            FIRST_STEP_AT.append(time.time())
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen


def accuracy(model, batches, device: str) -> float:
    import torch

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            correct += (model(images).argmax(1) == labels).sum().item()
            total += len(labels)
    return correct / total


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_tutorial(workload: str, epochs: int, data_dir: str, device: str, target: float | None) -> dict:
    import torch
    import torchvision
    from torchvision import transforms

    _, architecture, batch, optimizer_name, lr, mean, std = WORKLOADS[workload]
    steps = [transforms.ToTensor()] + ([transforms.Normalize((mean,), (std,))] if std != 1.0 or mean else [])
    transform = transforms.Compose(steps)
    train = torchvision.datasets.FashionMNIST(data_dir, train=True, transform=transform)
    test = torchvision.datasets.FashionMNIST(data_dir, train=False, transform=transform)
    train_loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=batch)
    model = make_model(architecture, device, workload=workload)
    optimizer = make_optimizer(optimizer_name, lr, model.parameters())
    return epochs_of(lambda: loop(model, optimizer, train_loader, device), lambda: accuracy(model, test_loader, device),
                     epochs, device, target)


def run_raw(workload: str, epochs: int, data_dir: str, device: str, target: float | None) -> dict:
    """Preloaded, normalized tensors, in the channels_last format that tinyvision uses by default.

    For the CIFAR-shaped workloads the images stay uint8 and each batch is cropped, flipped and
    normalized on the device, as a hand-written GPU loop with augmentation would do it."""
    import torch
    import torchvision
    from torchvision.transforms.v2 import functional as TF

    from tinyvision.host_memory import keep_freed_memory

    keep_freed_memory()  # the floor reuses freed memory as tinyvision does (TINYVISION_KEEP_FREED_MEMORY=0: not)
    _, architecture, batch, optimizer_name, lr, mean, std = WORKLOADS[workload]
    # torchvision's reader, as a hand-written loop would read the files (and without importing Lightning)
    train_set, test_set = (torchvision.datasets.FashionMNIST(data_dir, train=train) for train in (True, False))
    train_data, test_data = ((d.data.unsqueeze(1), d.targets) for d in (train_set, test_set))
    augmented = cifar_shaped(workload)
    if augmented:
        from tinyvision.data.augment import random_crop, random_horizontal_flip

    def prepare(images):
        if augmented:  # 3×32×32 uint8, as data.channels=3 data.image_size=32 makes it
            return TF.resize(images, [32, 32], antialias=True).expand(-1, 3, -1, -1).contiguous().to(device)
        return ((images.float() / 255 - mean) / std).to(device).contiguous(memory_format=torch.channels_last)

    def to_input(images, train: bool):
        if not augmented:
            return images
        if train:
            images = random_horizontal_flip(random_crop(images, CIFAR_CROP), 0.5)
        return ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)

    train_x, train_y = prepare(train_data[0]), train_data[1].to(device)
    test_x, test_y = prepare(test_data[0]), test_data[1].to(device)
    shape = (3, 32) if augmented else (1, 28)
    model = make_model(architecture, device, *shape, workload=workload).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(optimizer_name, lr, model.parameters())

    def train_epoch():
        order = torch.randperm(len(train_x), device=device)
        return loop(model, optimizer, ((to_input(train_x[i], True), train_y[i]) for i in order.split(batch)), device)

    def evaluate():
        return accuracy(model, ((to_input(test_x[i:i + 1024], False), test_y[i:i + 1024])
                                for i in range(0, len(test_x), 1024)), device)

    return epochs_of(train_epoch, evaluate, epochs, device, target)


def epochs_of(train_epoch, evaluate, epochs: int, device: str, target: float | None) -> dict:
    """Time each epoch's training and evaluation; stop early once ``target`` test accuracy is reached."""
    rows, elapsed = [], 0.0
    for epoch in range(1, epochs + 1):
        sync(device)
        start = time.perf_counter()
        seen = train_epoch()
        sync(device)
        trained = time.perf_counter()
        test_acc = evaluate()
        done = time.perf_counter()
        elapsed += done - start
        rows.append({"epoch": epoch, "train_seconds": trained - start, "eval_seconds": done - trained,
                     "samples": seen, "test_acc": test_acc, "elapsed": elapsed})
        if target is not None and test_acc >= target:
            break
    return {"epochs": rows, "peak_mib": peak_memory_mib(device)}


def run_tinyvision(workload: str, epochs: int, data_dir: str, device: str, target: float | None, overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir

    from tinyvision.training import train

    experiment, *_, = WORKLOADS[workload]
    with tempfile.TemporaryDirectory() as run_dir, initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"experiment={experiment}", "data=fashion", f"data.batch_size={WORKLOADS[workload][2]}",
            f"paths.data_dir={data_dir}", f"paths.output_dir={run_dir}",
            f"trainer.max_epochs={epochs}", f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            f"data.test_every_epoch={target is not None}", *(CIFAR_SHAPED if cifar_shaped(workload) else []),
            *WORKLOAD_OVERRIDES.get(workload, []), *overrides,
        ])
        if target is not None:
            from omegaconf import open_dict

            with open_dict(cfg):
                cfg.callbacks.stop_at_target = {
                    "_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": "test/acc", "mode": "max",
                    "stopping_threshold": target, "patience": epochs,
                }
        metrics = train(cfg)
    # "elapsed" is the time since fit began, validation, per-epoch test and checkpoints included.
    rows = [{"epoch": row["epoch"], "train_seconds": row["train_seconds"], "eval_seconds": metrics["test_seconds"],
             "samples": row["train_samples"],
             "test_acc": row.get("test/acc", metrics["test/acc"]), "elapsed": row["fit_seconds"]}
            for row in metrics["history"]]
    return {"epochs": rows, "peak_mib": peak_memory_mib(device)}


def child(args) -> None:
    kwargs = dict(workload=args.workload, epochs=args.epochs, data_dir=args.data_dir, device=args.device, target=args.target)
    if args.variant == "tutorial":
        result = run_tutorial(**kwargs)
    elif args.variant == "raw":
        result = run_raw(**kwargs)
    else:
        result = run_tinyvision(**kwargs, overrides=args.override)
    result["first_step_at"] = FIRST_STEP_AT[0] if FIRST_STEP_AT else None
    print("BENCH " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- orchestration (parent process)


def measure(variant: str, workload: str, args, epochs: int, overrides=(), target=None) -> dict:
    batch = WORKLOADS[workload][2]
    command = [sys.executable, __file__, "--child", variant, "--workload", workload, "--epochs", str(epochs),
               "--data-dir", args.data_dir, "--device", args.device]
    command += [f"--override={o.replace('BATCH', str(batch))}" for o in [*args.extra, *overrides]]
    if target is not None:
        command += ["--target", str(target)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{variant}/{workload} failed:\n{result.stderr[-4000:]}")
    measured = json.loads(lines[-1][len("BENCH "):])
    last = measured["epochs"][-1]
    print(f"  {variant:<10} {workload:<14} {' '.join(overrides):<60} {last['samples'] / last['train_seconds']:>10,.0f} "
          f"images/s  eval {last['eval_seconds']:.2f} s", flush=True)
    return measured


def measure_process(variant: str, args) -> dict:
    """Seconds from starting the command to its exit, and (tinyvision) to its first training step."""
    with tempfile.TemporaryDirectory() as run_dir:
        if variant in ("tutorial", "raw"):  # seed 002's loop, or the raw one, with a test every epoch, in a process
            command = [sys.executable, __file__, "--child", variant, "--workload", "lenet", "--epochs",
                       str(PROCESS_EPOCHS), "--data-dir", args.data_dir, "--device", args.device]
        else:
            command = [sys.executable, "train.py", f"paths.data_dir={args.data_dir}", f"hydra.run.dir={run_dir}",
                       f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", *args.extra]
            command += ["trainer=debug"] if variant == "tinyvision trainer=debug" else \
                ["experiment=lenet_fashion", f"trainer.max_epochs={PROCESS_EPOCHS}"]
        started = time.time()
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        seconds = time.time() - started
        if result.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{result.stderr[-4000:]}")
        metrics_file = Path(run_dir) / "metrics.json"
        first_step = json.loads(metrics_file.read_text()).get("first_step_at") if metrics_file.exists() else None
        child_lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
        if child_lines:
            first_step = json.loads(child_lines[-1][len("BENCH "):]).get("first_step_at")
    print(f"  whole process: {variant:<28} {seconds:6.1f} s", flush=True)
    return {"seconds": seconds, "to_first_step": first_step - started if first_step else None}


def summarize(results: list[dict]) -> dict:
    """Median over repeats of the last epoch's figures (the first epoch carries warm-up and compilation)."""
    last = [r["epochs"][-1] for r in results]
    train_s = statistics.median(row["train_seconds"] for row in last)
    return {
        "train_s": train_s,
        "eval_s": statistics.median(row["eval_seconds"] for row in last),
        "samples_per_s": statistics.median(row["samples"] / row["train_seconds"] for row in last),
        "peak_mib": statistics.median(r["peak_mib"] for r in results),
        "first_epoch_s": statistics.median(r["epochs"][0]["train_seconds"] for r in results),
        "test_acc": statistics.median(row["test_acc"] for row in last),
    }


def ensure_data(data_dir: str) -> None:
    from tinyvision.data.sources import fetch

    fetch("fashion", data_dir, ["/usr/share/datasets/fashion-mnist"], download=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement; the last one is reported")
    parser.add_argument("--workloads", default="lenet,convnet")
    parser.add_argument("--options", default=",".join(OPTIONS), help="speed options to measure on and off")
    parser.add_argument("--options-workloads", help="the workloads the options are measured on (default: all)")
    parser.add_argument("--target-epochs", type=int, default=10, help="epochs allowed to reach 0.804 (0: skip)")
    parser.add_argument("--process", action=argparse.BooleanOptionalAction, default=True,
                        help=f"time whole processes: the tutorial and train.py for {PROCESS_EPOCHS} epochs, trainer=debug")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data-dir", default=os.environ.get("TINYVISION_DATA_DIR", str(ROOT / "data")))
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--child", choices=["tutorial", "raw", "tinyvision"])
    parser.add_argument("--workload", default="lenet")
    parser.add_argument("--target", type=float)
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--extra", action="append", default=[], help="an override for every tinyvision run")
    args = parser.parse_args()
    if args.child:
        return child(argparse.Namespace(**{**vars(args), "variant": args.child}))

    ensure_data(args.data_dir)
    workloads = args.workloads.split(",")
    options = [o for o in args.options.split(",") if o]
    options_workloads = args.options_workloads.split(",") if args.options_workloads else workloads
    runs: dict[tuple, list] = {}
    started = time.time()
    processes: dict[str, list] = {}
    for repeat in range(1, args.repeats + 1):
        print(f"repeat {repeat}/{args.repeats}", flush=True)
        for variant in ("tutorial", "raw", "tinyvision", "tinyvision trainer=debug") if args.process else ():
            processes.setdefault(variant, []).append(measure_process(variant, args))
        for workload in workloads:
            for variant in variants(workload):
                runs.setdefault((variant, workload), []).append(measure(variant, workload, args, args.epochs))
            done = {(): runs[("tinyvision", workload)][-1]}  # this repeat's measurements by their overrides
            for option in options if workload in options_workloads else ():
                for state, overrides in zip(("on", "off"), OPTIONS[option]):
                    if tuple(overrides) not in done:
                        done[tuple(overrides)] = measure("tinyvision", workload, args, args.epochs, overrides)
                    runs.setdefault((f"tinyvision {option} {state}", workload), []).append(done[tuple(overrides)])
        if repeat < args.repeats:  # a report after every repeat: a benchmark stopped early still leaves one
            write_report(args, workloads, options, options_workloads, runs, {}, time.time() - started, repeat,
                         processes)
    target_runs = {}
    if args.target_epochs:
        print("time to 0.804 test accuracy, seed-002 recipe", flush=True)
        for variant in ("tutorial", "tinyvision"):
            target_runs[variant] = measure(variant, "lenet", args, args.target_epochs, target=0.804)
    report = write_report(args, workloads, options, options_workloads, runs, target_runs, time.time() - started,
                          processes=processes)
    print(report)


def variants(workload: str) -> tuple[str, ...]:
    # The tutorial loop is seed 000/002's (Fashion-MNIST through PIL); the CIFAR-shaped workloads compare with the raw loop.
    return ("raw", "tinyvision") if cifar_shaped(workload) else ("tutorial", "raw", "tinyvision")


def time_to_target(result: dict, target: float) -> tuple[float | None, int | None]:
    for row in result["epochs"]:
        if row["test_acc"] >= target:
            return row["elapsed"], row["epoch"]
    return None, None


def write_report(args, workloads, options, options_workloads, runs, target_runs, seconds: float,
                 repeats: int | None = None, processes: dict | None = None) -> str:
    import torch

    summary = {key: summarize(value) for key, value in runs.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    command = "python bench/bench.py " + " ".join(sys.argv[1:])
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`{command.strip()}`) on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC,",
        f"commit {commit}, torch {torch.__version__}, device: {device}. Took {seconds / 60:.1f} minutes.",
        f"Each figure is the median of {repeats or args.repeats} repeats, variants interleaved within each repeat, each",
        f"measurement in its own process; a measurement trains {args.epochs} epochs and the last one is reported",
        "(the first carries warm-up and, with compile, compilation). Evaluation is one pass over the 10,000 test images.",
        "",
        "## Tutorial loop, raw loop and tinyvision",
        "",
        "| workload | variant | train s/epoch | eval s | train images/s | peak memory MiB | first epoch s | test acc |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    if processes:
        whole = {v: statistics.median(r["seconds"] for r in rows) for v, rows in processes.items()}
        first = {v: statistics.median(r["to_first_step"] for r in rows) if rows[0]["to_first_step"] is not None
                 else None for v, rows in processes.items()}
        lines[-4:-4] = [
            f"## Whole process ({PROCESS_EPOCHS} epochs of seed 002's recipe, from the command to its exit)", "",
            "| variant | seconds | to the first training step |", "|---|---:|---:|",
            *(f"| {v} | {whole[v]:.1f} | {'-' if first[v] is None else f'{first[v]:.1f}'} |" for v in whole),
            "", f"raw/tinyvision, whole process: {whole['raw'] / whole['tinyvision']:.2f} (target ≥ 0.9); tinyvision's "
            f"time to its first training step: {first['tinyvision']:.1f} s (target ≤ 2 s; the raw loop's "
            f"{first['raw']:.1f} s). The tutorial and raw loops test after every epoch, as seed 002 does; tinyvision "
            "validates every epoch, tests the best checkpoint once, writes checkpoints, TensorBoard events and pictures.", "",
        ]
    for workload in workloads:
        for variant in variants(workload):
            s = summary[(variant, workload)]
            lines.append(f"| {workload} | {variant} | {s['train_s']:.2f} | {s['eval_s']:.2f} | {s['samples_per_s']:,.0f} | "
                         f"{s['peak_mib']:,.0f} | {s['first_epoch_s']:.2f} | {s['test_acc']:.3f} |")
    lines += ["", "| workload | training throughput tinyvision/raw (target ≥ 0.95) | evaluation speed tinyvision/raw "
              "(target ≥ 0.95) | training throughput tinyvision/tutorial | evaluation speed tinyvision/tutorial |",
              "|---|---:|---:|---:|---:|"]
    for workload in workloads:
        b, c = summary[("raw", workload)], summary[("tinyvision", workload)]
        a = summary.get(("tutorial", workload))
        versus_tutorial = f"{c['samples_per_s'] / a['samples_per_s']:.2f}" if a else "-"
        eval_versus_tutorial = f"{a['eval_s'] / c['eval_s']:.2f}" if a else "-"
        lines.append(f"| {workload} | {c['samples_per_s'] / b['samples_per_s']:.2f} | {b['eval_s'] / c['eval_s']:.2f} | "
                     f"{versus_tutorial} | {eval_versus_tutorial} |")
    if options:
        lines += ["", "## Speed options (tinyvision, each on and off in the same run)", "",
                  "| workload | option | train s/epoch on | off | speed-up | eval s on | off | test acc on | off |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for workload in options_workloads:
            for option in options:
                on, off = summary[(f"tinyvision {option} on", workload)], summary[(f"tinyvision {option} off", workload)]
                lines.append(f"| {workload} | {option} | {on['train_s']:.2f} | {off['train_s']:.2f} | "
                             f"{off['train_s'] / on['train_s']:.2f} | {on['eval_s']:.2f} | {off['eval_s']:.2f} | "
                             f"{on['test_acc']:.3f} | {off['test_acc']:.3f} |")
    if target_runs:
        lines += ["", "## Time to the seed's 0.804 Fashion-MNIST test accuracy (seed-002 recipe)", "",
                  "| variant | seconds | epoch | test accuracy per epoch |", "|---|---:|---:|---|"]
        times = {}
        for variant, result in target_runs.items():
            seconds_to, epoch = time_to_target(result, 0.804)
            times[variant] = seconds_to
            curve = " ".join(f"{row['test_acc']:.3f}" for row in result["epochs"])
            lines.append(f"| {variant} | {'not reached' if seconds_to is None else f'{seconds_to:.1f}'} | {epoch or '-'} | {curve} |")
        if all(times.values()):
            lines += ["", f"tinyvision/tutorial time to accuracy: {times['tinyvision'] / times['tutorial']:.2f}."]
    report = "\n".join(lines) + "\n"
    if args.out:
        existing = Path(args.out).read_text() if Path(args.out).exists() else ""
        marker = "<!-- reading -->"
        reading = existing[existing.index(marker):] if marker in existing else f"{marker}\n"
        Path(args.out).write_text(report + "\n" + reading)
    return report


if __name__ == "__main__":
    main()
