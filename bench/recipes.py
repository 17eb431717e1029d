"""Train every experiment= recipe on real images and write its results into RESULTS.md, from the runs' own
metrics.json files (no figure is typed by hand).

    python bench/recipes.py                        # every recipe on the full data, CPU budgets (make recipes)
    python bench/recipes.py --train-size 5000      # every recipe on a 5,000-image training subset
    python bench/recipes.py --device gpu           # the recipes at their own length on a GPU

The real data every machine here has is Fashion-MNIST (Debian's dataset-fashion-mnist): lenet_fashion and
fashion_fast run as written; the MNIST recipes run on Fashion-MNIST, and the CIFAR-10 recipes on Fashion-MNIST
made CIFAR-shaped (3 channels, 32×32), with the same architecture, optimizer, schedule, batch and augmentation;
each is labelled so. A recipe too long for a CPU runs under a stated budget (fewer epochs or batches).

Each mode rewrites its own section of RESULTS.md (the full data, or one training-subset size) and keeps the
others, so the file can hold both; each section names its command and the commit its code came from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Recipe:
    name: str
    tutorial: str  # what the tutorial it comes from reports
    tutorial_curve: list[float] = field(default_factory=list)  # its test accuracy per epoch, where it gives one
    here: list[str] = field(default_factory=list)  # overrides that move the recipe onto Fashion-MNIST
    cpu_budget: list[str] = field(default_factory=list)  # a shorter budget on a CPU, stated in RESULTS.md
    original: str = ""  # the command on the recipe's own dataset


TUTORIAL_1_MNIST = [v / 10000 for v in (9695, 9825, 9866, 9859, 9885, 9881, 9895, 9886, 9909, 9902,
                                        9905, 9902, 9906, 9896, 9909, 9905, 9922, 9914, 9901, 9899)]
TUTORIAL_3_FASHION = [0.168, 0.599, 0.665, 0.723, 0.753, 0.754, 0.785, 0.791, 0.790, 0.804]
CIFAR_ON_FASHION = ["data=fashion", "data.image_size=32"]
CIFAR_SHAPED = ["data=fashion", "data.channels=3", "data.image_size=32"]

RECIPES = [
    Recipe("lenet_fashion", "tutorial 3 (sigmoid LeNet, Fashion-MNIST): test accuracy 0.804 after 10 epochs", TUTORIAL_3_FASHION),
    Recipe("convnet_mnist", "tutorial 1 (ConvNet, MNIST): 96.95% after epoch 1, best 99.22%", TUTORIAL_1_MNIST,
           here=["data=fashion"], original="python train.py experiment=convnet_mnist"),
    Recipe("mlp_mnist", "tutorial 2 (MLP, MNIST): no training result", here=["data=fashion"],
           original="python train.py experiment=mlp_mnist"),
    Recipe("cifar_net", "tutorial 4 (CIFAR-10 net): no accuracy reported", here=CIFAR_ON_FASHION,
           cpu_budget=["trainer.max_epochs=5"], original="python train.py experiment=cifar_net"),
    Recipe("cifar_net_v3", "tutorial 4 (CIFAR-10 net with BatchNorm and Dropout): about 88% after 150 epochs",
           here=CIFAR_ON_FASHION, cpu_budget=["trainer.max_epochs=3"], original="python train.py experiment=cifar_net_v3"),
    Recipe("vgg16_cifar10", "tutorial 4 (VGG16 transfer, CIFAR-10, ImageNet weights): no accuracy reported",
           here=CIFAR_ON_FASHION, cpu_budget=["trainer.max_epochs=1", "trainer.limit_train_batches=100"],
           original="python train.py experiment=vgg16_cifar10 model.weights=IMAGENET1K_V1"),
    Recipe("fashion_fast", "tinyvision's fast Fashion-MNIST recipe (no tutorial)"),
    Recipe("cifar10_fast", "airbench94's published recipe (94% on CIFAR-10 on a GPU); no tutorial", here=CIFAR_SHAPED,
           cpu_budget=["data.train_size=5000"], original="python train.py experiment=cifar10_fast trainer.precision=bf16-mixed"),
]
GPU_SET = {"lenet_fashion", "convnet_mnist", "cifar_net_v3", "fashion_fast", "cifar10_fast"}
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.val_size=50",
        "data.eval_batch_size=64", "data.train_size=null"]
SECTION = re.compile(r"<!-- recipes: (?P<mode>[^>]*?) -->.*?<!-- end of recipes: (?P=mode) -->\n?", re.S)


def overrides_for(recipe: Recipe, args) -> list[str]:
    """The command-line overrides of one recipe's run in this mode."""
    overrides = [f"experiment={recipe.name}", *recipe.here, "data.test_every_epoch=true", "callbacks=minimal",
                 f"paths.data_dir={args.data_dir}", f"trainer={'gpu' if args.device == 'gpu' else 'cpu'}"]
    if args.device == "cpu":
        overrides += [o for o in recipe.cpu_budget if not (args.train_size and o.startswith("data.train_size"))]
    if args.train_size:
        overrides += [f"data.train_size={args.train_size}", f"data.val_size={args.val_size}"]
    if args.tiny:
        overrides = [o for o in overrides if not o.startswith(("trainer.max_epochs", "trainer.limit", "data.train_size"))] + TINY
    return overrides


def run(recipe: Recipe, args, run_dir: Path) -> tuple[list[str], dict]:
    overrides = overrides_for(recipe, args)
    command = ["python", "train.py", *overrides]
    print(f"$ {' '.join(command)}", flush=True)
    result = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{recipe.name} failed:\n{result.stderr[-4000:]}")
    return command, json.loads((run_dir / "metrics.json").read_text())


def plot(path: Path, recipe: Recipe, curve: list[float], label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.6))
    if recipe.tutorial_curve:
        axes.plot(range(1, len(recipe.tutorial_curve) + 1), recipe.tutorial_curve, "o--", label="tutorial (reported)")
    axes.plot(range(1, len(curve) + 1), curve, "o-", label=f"tinyvision ({label})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("test accuracy")
    axes.set_title(recipe.name)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def code_version() -> str:
    """The commit the runs' code came from, marked when the working tree differs from it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "conf", "train.py"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return f"{commit or 'unknown'}{' with uncommitted changes to src/conf' if dirty else ''}"


def section(recipes: list[Recipe], args, mode: str, runs_dir: Path, plots_dir: Path) -> list[str]:
    """The Markdown of one mode: a table of every recipe, then each recipe's curve."""
    import torch

    device = torch.cuda.get_device_name() if args.device == "gpu" else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    invoked = " ".join(["python bench/recipes.py", *sys.argv[1:]])
    lines = [f"<!-- recipes: {mode} -->",
             f"## {'Every recipe on the full data' if mode == 'full' else f'Every recipe on a {mode} training subset'}", "",
             f"Written by `{invoked}` on {datetime.now(timezone.utc):%Y-%m-%d} UTC from code at commit {code_version()}, "
             f"{device}, torch {torch.__version__}. Test accuracy is the best checkpoint's (by validation accuracy) on the "
             "whole test split; the curve is the test accuracy after each epoch.", "",
             "| recipe | data here | images an epoch | epochs | test acc | best val acc | whole run | warnings |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    details = []
    for recipe in recipes:
        command, metrics = run(recipe, args, runs_dir / recipe.name)
        curve = [row["test/acc"] for row in metrics["history"] if "test/acc" in row]
        resized = " at 3×32×32" if "data.channels=3" in recipe.here else " at 32×32" if "data.image_size=32" in recipe.here else ""
        shape = "Fashion-MNIST" + resized
        trained = metrics["history"][0]["train_samples"] if metrics["history"] else 0
        lines.append(f"| {recipe.name} | {shape} | {trained:,} | {metrics['epochs']} | {metrics['test/acc']:.4f} | "
                     f"{metrics['val/acc_best']:.4f} | {metrics['wall_seconds']:.0f} s | "
                     f"{'; '.join(w.split(':')[0] for w in metrics.get('warnings') or []) or '-'} |")
        details += [f"### {recipe.name}", "", f"- tutorial: {recipe.tutorial}", f"- command: `{' '.join(command)}`"]
        budget = [o for o in recipe.cpu_budget if o in command]
        if args.device == "cpu" and budget and not args.tiny:
            details.append(f"- budget on a CPU: `{' '.join(budget)}` instead of the recipe's length "
                           f"(`python bench/recipes.py --device gpu --recipes {recipe.name}` runs it in full)")
        if recipe.original:
            details.append(f"- on the recipe's own dataset (needs internet once): `{recipe.original}`")
        details += ["", "| epoch | " + " | ".join(str(i) for i in range(1, len(curve) + 1)) + " |",
                    "|---|" + "---:|" * len(curve), "| tinyvision | " + " | ".join(f"{v:.3f}" for v in curve) + " |"]
        if recipe.tutorial_curve and mode == "full":
            reported = [f"{v:.3f}" for v in recipe.tutorial_curve[: len(curve)]]
            details.append("| tutorial | " + " | ".join(reported + [""] * (len(curve) - len(reported))) + " |")
        if mode == "full":
            plot(plots_dir / f"{recipe.name}.png", recipe, curve, "Fashion-MNIST")
            details += ["", f"![{recipe.name}](results/{recipe.name}.png)"]
        details.append("")
    return lines + [""] + details + [f"<!-- end of recipes: {mode} -->", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--recipes", default=",".join(r.name for r in RECIPES))
    parser.add_argument("--train-size", type=int, default=None, help="train every recipe on this many images")
    parser.add_argument("--val-size", type=int, default=5000, help="with --train-size: the validation images")
    parser.add_argument("--data-dir", default=os.environ.get("TINYVISION_DATA_DIR", str(ROOT / "data")))
    parser.add_argument("--out", default=str(ROOT / "RESULTS.md"))
    parser.add_argument("--runs", default=str(ROOT / "outputs" / "recipes"))
    parser.add_argument("--tiny", action="store_true", help="one short epoch each (for the tests)")
    args = parser.parse_args()

    wanted = args.recipes.split(",")
    unknown = sorted(set(wanted) - {r.name for r in RECIPES})
    if unknown:
        parser.error(f"--recipes {','.join(unknown)}: not a recipe; choose from {', '.join(r.name for r in RECIPES)}")
    if args.device == "gpu" and "--recipes" not in " ".join(sys.argv):
        wanted = [name for name in wanted if name in GPU_SET]
    recipes = [r for r in RECIPES if r.name in wanted]
    mode = f"{args.train_size:,}-image" if args.train_size else "full"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(args.out)
    plots_dir = out.parent / "results"
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = "\n".join(section(recipes, args, mode, Path(args.runs) / stamp, plots_dir))

    header = ("# Results: every recipe, trained on real images\n\nWritten by `make recipes` (bench/recipes.py) from the "
              "runs' own metrics.json; each section names its command and commit. The tutorials are the five this "
              "project started from (README).\n\n")
    text = out.read_text() if out.is_file() else header
    sections = {m.group("mode"): m.group(0) for m in SECTION.finditer(text)}
    sections[mode] = written
    order = ["full"] + sorted(m for m in sections if m != "full")
    out.write_text(header + "\n".join(sections[m].rstrip("\n") + "\n" for m in order if m in sections))
    print(f"wrote the {mode} section of {out}")


if __name__ == "__main__":
    main()
