"""Run each seed's recipe with tinyvision and write RESULTS.md beside the seeds' own figures.

    python bench/reproduce.py               # on this CPU, within about 30 minutes (make reproduce)
    python bench/reproduce.py --device gpu  # the full recipes (cifar_net_v3: 150 epochs) on a GPU

Only Fashion-MNIST is on this machine: seed 002 runs as written; the MNIST and CIFAR-10 recipes run on
Fashion-MNIST (same architecture, optimizer, schedule, batch and augmentation; one input channel,
resized to 32×32 for the CIFAR nets) and are labelled so. Every figure is read back from the runs'
own metrics.json files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Experiment:
    name: str
    seed: str  # what the tutorial reports
    seed_curve: list[float] = field(default_factory=list)  # its test accuracy per epoch, where it gives one
    here: list[str] = field(default_factory=list)  # overrides that move the recipe onto Fashion-MNIST
    cpu_budget: list[str] = field(default_factory=list)  # a shorter budget on a CPU, stated in RESULTS.md
    original: str = ""  # the command on the recipe's own dataset


SEED_000 = [v / 10000 for v in (9695, 9825, 9866, 9859, 9885, 9881, 9895, 9886, 9909, 9902,
                                9905, 9902, 9906, 9896, 9909, 9905, 9922, 9914, 9901, 9899)]
SEED_002 = [0.168, 0.599, 0.665, 0.723, 0.753, 0.754, 0.785, 0.791, 0.790, 0.804]
CIFAR_ON_FASHION = ["data=fashion", "data.image_size=32"]

EXPERIMENTS = [
    Experiment("lenet_fashion", "seed 002: test accuracy 0.804 after 10 epochs, 21.6 s/epoch on a CPU", SEED_002),
    Experiment("convnet_mnist", "seed 000 (MNIST): 96.95% after epoch 1, 99.0-99.2% from epoch 3, best 99.22%", SEED_000,
               here=["data=fashion"], original="python train.py experiment=convnet_mnist"),
    Experiment("mlp_mnist", "seed 001 (MNIST): no training result", here=["data=fashion"],
               original="python train.py experiment=mlp_mnist"),
    Experiment("cifar_net", "seed 003 §10 (CIFAR-10): no accuracy reported", here=CIFAR_ON_FASHION,
               cpu_budget=["trainer.max_epochs=5"], original="python train.py experiment=cifar_net"),
    Experiment("cifar_net_v3", "seed 003 §12.3 (CIFAR-10): about 88% after 150 epochs", here=CIFAR_ON_FASHION,
               cpu_budget=["trainer.max_epochs=3"], original="python train.py experiment=cifar_net_v3"),
    Experiment("vgg16_cifar10", "seed 003 §11 (CIFAR-10, ImageNet weights): no accuracy reported", here=CIFAR_ON_FASHION,
               cpu_budget=["trainer.max_epochs=1", "trainer.limit_train_batches=100"],
               original="python train.py experiment=vgg16_cifar10 model.weights=IMAGENET1K_V1"),
]
GPU_SET = {"lenet_fashion", "convnet_mnist", "cifar_net_v3"}
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.val_size=50",
        "data.eval_batch_size=64"]


def run(experiment: Experiment, args, run_dir: Path) -> tuple[list[str], dict]:
    overrides = [f"experiment={experiment.name}", *experiment.here, "data.test_every_epoch=true", "callbacks=minimal",
                 f"paths.data_dir={args.data_dir}", f"trainer={'gpu' if args.device == 'gpu' else 'cpu'}"]
    if args.device == "cpu":
        overrides += experiment.cpu_budget
    if args.tiny:
        overrides = [o for o in overrides if not o.startswith(("trainer.max_epochs", "trainer.limit"))] + TINY
    command = ["python", "train.py", *overrides]
    print(f"$ {' '.join(command)}", flush=True)
    result = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{experiment.name} failed:\n{result.stderr[-4000:]}")
    return command, json.loads((run_dir / "metrics.json").read_text())


def plot(path: Path, experiment: Experiment, curve: list[float], label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.6))
    if experiment.seed_curve:
        axes.plot(range(1, len(experiment.seed_curve) + 1), experiment.seed_curve, "o--", label="tutorial (reported)")
    axes.plot(range(1, len(curve) + 1), curve, "o-", label=f"tinyvision ({label})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("test accuracy")
    axes.set_title(experiment.name)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


HAND_WRITTEN = "<!-- written by hand below: make reproduce keeps it -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--experiments", default=",".join(e.name for e in EXPERIMENTS))
    parser.add_argument("--data-dir", default=os.environ.get("TINYVISION_DATA_DIR", str(ROOT / "data")))
    parser.add_argument("--out", default=str(ROOT / "RESULTS.md"))
    parser.add_argument("--runs", default=str(ROOT / "outputs" / "reproduce"))
    parser.add_argument("--tiny", action="store_true", help="one short epoch each (for the tests)")
    args = parser.parse_args()

    wanted = args.experiments.split(",")
    if args.device == "gpu" and "--experiments" not in " ".join(sys.argv):
        wanted = [name for name in wanted if name in GPU_SET]
    experiments = [e for e in EXPERIMENTS if e.name in wanted]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    runs_dir, out = Path(args.runs) / stamp, Path(args.out)
    plots_dir = out.parent / "results"
    plots_dir.mkdir(parents=True, exist_ok=True)

    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    device = torch.cuda.get_device_name() if args.device == "gpu" else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    lines = [
        "# Results: the tutorials' recipes, run with tinyvision",
        "",
        f"Generated by `make reproduce` (`{' '.join(['python bench/reproduce.py', *sys.argv[1:]])}`) on "
        f"{datetime.now(timezone.utc):%Y-%m-%d} UTC, commit {commit}, {device}, torch {torch.__version__}.",
        "Each curve is the test accuracy after every epoch, read from the run's own metrics.json; the final",
        "figure is the test accuracy of the best checkpoint (by validation accuracy). 5,000 training images",
        "are held out for validation, so tinyvision trains on 55,000 where the tutorials train on 60,000.",
        "",
    ]
    total = 0.0
    for experiment in experiments:
        command, metrics = run(experiment, args, runs_dir / experiment.name)
        curve = [row["test/acc"] for row in metrics["history"]]
        total += metrics["wall_seconds"]
        moved = bool(experiment.here)
        label = "Fashion-MNIST" if moved else "as the seed"
        plot(plots_dir / f"{experiment.name}.png", experiment, curve, label)
        seconds_per_epoch = sum(r["train_seconds"] + r["val_seconds"] for r in metrics["history"]) / max(len(curve), 1)
        lines += [
            f"## {experiment.name}" + (" — on Fashion-MNIST, not the recipe's own dataset" if moved else ""),
            "",
            f"- tutorial: {experiment.seed}",
            f"- tinyvision: final test accuracy {metrics['test/acc']:.4f}, best epoch {max(curve):.4f}, "
            f"{len(curve)} epochs in {metrics['wall_seconds']:.0f} s ({seconds_per_epoch:.1f} s/epoch with evaluation) on {device}",
            f"- command: `{' '.join(command)}`",
        ]
        if args.device == "cpu" and experiment.cpu_budget and not args.tiny:
            lines.append(f"- budget on this CPU: `{' '.join(experiment.cpu_budget)}` instead of the recipe's length "
                         f"(`python bench/reproduce.py --device gpu --experiments {experiment.name}` runs it in full)")
        if moved:
            lines.append(f"- on the recipe's own dataset (needs internet once): `{experiment.original}`")
        lines += ["", "| epoch | " + " | ".join(str(i) for i in range(1, len(curve) + 1)) + " |",
                  "|---|" + "---:|" * len(curve),
                  "| tinyvision | " + " | ".join(f"{v:.3f}" for v in curve) + " |"]
        if experiment.seed_curve:
            reported = [f"{v:.3f}" for v in experiment.seed_curve[: len(curve)]]
            lines.append("| tutorial | " + " | ".join(reported + [""] * (len(curve) - len(reported))) + " |")
        lines += ["", f"![{experiment.name}](results/{experiment.name}.png)", ""]
    shown_dir = runs_dir.relative_to(ROOT) if runs_dir.is_relative_to(ROOT) else runs_dir
    lines.append(f"Total training time: {total / 60:.1f} minutes. Run folders: `{shown_dir}`.")
    # The hand-written part (the fast recipes, measured by their own commands) is kept as it is.
    kept = out.read_text().split(HAND_WRITTEN, 1)[1] if out.is_file() and HAND_WRITTEN in out.read_text() else ""
    out.write_text("\n".join(lines) + "\n" + (f"\n{HAND_WRITTEN}{kept}" if kept else ""))
    print(f"wrote {out} and {plots_dir}/")


if __name__ == "__main__":
    main()
