"""How well the data audit finds wrong labels: real Fashion-MNIST images written as a folder, a seeded share of the
training labels moved to other classes, a k-fold sweep with its audit, and the flagged list's precision and recall
against the moved images (for both of confident learning's filters). A second sweep on the same images, unmodified,
gives the top suspects of the real labels as a picture. Writes its section of RESULTS.md.

    python bench/audit_noise.py                         # 10,000 images, 5% moved, 5 folds of a ConvNet, 4 epochs
    python bench/audit_noise.py --images 2000 --epochs 2 --out /tmp/R.md   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
SECTION = re.compile(r"<!-- audit -->.*?<!-- end of audit -->\n?", re.S)


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str], moved: dict[int, int],
                 test: tuple[np.ndarray, np.ndarray]) -> set[str]:
    """train/<class>/<index>.png, each image under its label or, when moved, under another class, and test/ with the
    real test images; returns the moved images' paths (relative to train/, as label_issues.csv names them)."""
    for index, (image, label) in enumerate(zip(*test)):
        folder = root / "test" / classes[int(label)].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    paths = set()
    for index, (image, label) in enumerate(zip(images, labels)):
        given = moved.get(index, int(label))
        folder = root / "train" / classes[given].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
        if index in moved:
            paths.add(f"{folder.name}/{index:05d}.png")
    return paths


def sweep(root: Path, out: Path, args) -> float:
    command = [sys.executable, "train.py", "-m", "data=folder", f"data.root={root}", "data.channels=1", "data.image_size=28",
               "data.mean=[0.286]", "data.std=[0.353]", f"data.folds={args.folds}", f"data.fold=range({args.folds})",
               f"model={args.model}", f"trainer.max_epochs={args.epochs}", "trainer=cpu", "callbacks=minimal", "logger=none",
               f"data.cache_dir={out.parent / 'cache'}", f"hydra.sweep.dir={out}"]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def flagged(sweep_dir: Path, method: str) -> list[str]:
    if method != "prune_by_noise_rate":
        subprocess.run([sys.executable, "audit.py", f"sweep={sweep_dir}", f"method={method}", "duplicates=false",
                        f"hydra.run.dir={sweep_dir.parent / ('audit_' + method)}"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return [row["path"] for row in csv.DictReader((sweep_dir / "label_issues.csv").open())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "audit_noise")
    parser.add_argument("--out", type=Path, default=ROOT / "RESULTS.md")
    args = parser.parse_args()

    # the code measured is the code at the start: commits made while it runs are not its
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    sys.path.insert(0, str(ROOT / "src"))
    from tinyvision.data import sources

    data = sources.load("fashion", args.runs / "data", [str(FASHION)], download=False)
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(data.train[1]), size=args.images, replace=False)
    images, labels = data.train[0][pick, 0].numpy(), data.train[1][pick].numpy()
    moved_rows = rng.choice(args.images, size=round(args.noise * args.images), replace=False)
    moved = {int(r): int((labels[r] + rng.integers(1, 10)) % 10) for r in moved_rows}
    shutil.rmtree(args.runs / "noisy", ignore_errors=True)
    shutil.rmtree(args.runs / "clean", ignore_errors=True)
    test = (data.test[0][:2000, 0].numpy(), data.test[1][:2000].numpy())
    moved_paths = write_folder(args.runs / "noisy" / "images", images, labels, data.classes, moved, test)
    write_folder(args.runs / "clean" / "images", images, labels, data.classes, {}, test)
    seconds = sweep(args.runs / "noisy" / "images", args.runs / "noisy" / "sweep", args)
    rows = []
    for method in ("prune_by_noise_rate", "confident_learning"):
        found = flagged(args.runs / "noisy" / "sweep", method)
        hits = len(set(found) & moved_paths)
        first = len(set(found[:len(moved_paths)]) & moved_paths) / len(moved_paths)  # the list's head, as read
        rows.append((method, len(found), hits, hits / max(1, len(found)), hits / len(moved_paths), first))
    sweep(args.runs / "clean" / "images", args.runs / "clean" / "sweep", args)
    picture = ROOT / "results" / "audit_fashion.png"
    shutil.copy(args.runs / "clean" / "sweep" / "label_issues.png", picture)
    clean_flagged = len(flagged(args.runs / "clean" / "sweep", "prune_by_noise_rate"))
    command = (f"python bench/audit_noise.py --images {args.images} --noise {args.noise} --folds {args.folds} "
               f"--epochs {args.epochs} --model {args.model} --seed {args.seed}")
    lines = ["<!-- audit -->", "## The data audit: finding moved labels", "",
             f"`{command}` at commit {commit}: {args.images:,} real Fashion-MNIST training images written as a folder, "
             f"{len(moved_paths)} of them ({args.noise:.0%}, seeded) moved to another class's folder, a "
             f"{args.folds}-fold sweep of a {args.model} ({args.epochs} epochs a fold, {seconds / 60:.1f} minutes on a "
             "2-core CPU), then the audit at the sweep's end and `audit.py method=confident_learning`:", "",
             f"| filter | flagged | of them moved | precision | recall | precision of the first {len(moved_paths)} |",
             "|---|---:|---:|---:|---:|---:|",
             *(f"| `{m}` | {n} | {h} | {p:.3f} | {r:.3f} | {f:.3f} |" for m, n, h, p, r, f in rows), "",
             f"The same images unmodified: {clean_flagged} flagged by `prune_by_noise_rate`. Its top suspects "
             "(given label, the models' suggestion and the score), the real labels' most doubtful images:", "",
             "![top suspects of real Fashion-MNIST labels](results/audit_fashion.png)", "",
             "Precision is what a user reads first: the flagged images that really were moved. Fashion-MNIST's own "
             "classes overlap (shirt, T-shirt, pullover, coat), so a model that confuses them also flags unmodified "
             "images whose label it doubts; those are counted as false here, though some are the dataset's own label "
             "errors.", "<!-- end of audit -->", ""]
    text = args.out.read_text() if args.out.is_file() else ""
    section = "\n".join(lines)
    text = SECTION.sub(lambda _: section, text) if SECTION.search(text) else text.rstrip("\n") + "\n\n" + section
    args.out.write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
