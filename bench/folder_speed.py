"""data=folder: the decoded-once cache against the per-image DataLoader path, on a folder of real images.

    python bench/folder_speed.py [--data-dir data] [--repeats 2] [--epochs 3]

Writes Fashion-MNIST's 10,000 test images as PNG files into one subfolder per class (once, under
outputs/bench/fashion_png), then trains `python train.py data=folder ...` on them with each path in
turn (interleaved, each run its own process) and prints the training epochs per second of the last
epoch (validation excluded) and the whole run's wall time. The figures go into BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_pngs(data_dir: str, folder: Path) -> Path:
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == 10_000:
        return folder
    sys.path.insert(0, str(ROOT / "src"))
    from PIL import Image

    from tinyvision.data.sources import load

    splits = load("fashion", data_dir, ["/usr/share/datasets/fashion-mnist"], download=False)
    images, labels = splits.test
    for index, (image, label) in enumerate(zip(images, labels.tolist())):
        target = folder / f"{label}_{splits.classes[label].replace('/', '-')}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(target / f"{index:05d}.png")
    return folder


def run(folder: Path, cached: bool, epochs: int, work: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=work))
    command = [sys.executable, str(ROOT / "train.py"), "model=convnet", "data=folder", f"data.root={folder}", "data.num_classes=10",
               "data.channels=1", "data.image_size=28", "data.mean=[0.2860]", "data.std=[0.3530]", "data.batch_size=128",
               f"data.cache_dir={work / 'cache'}", f"data.cache_max_gb={'null' if cached else 0}", f"trainer.max_epochs={epochs}",
               "trainer.accelerator=cpu", "callbacks=minimal", "logger=none", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    last = metrics["history"][-1]
    return {"epoch_s": last["train_seconds"], "images_per_s": last["train_samples"] / last["train_seconds"],
            "wall_s": metrics["finished_at"] - metrics["started_at"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    work = ROOT / "outputs" / "bench"
    folder = write_pngs(args.data_dir, work / "fashion_png")
    results: dict[str, list[dict]] = {"cached": [], "per image": []}
    for repeat in range(args.repeats):
        for name in results:  # interleaved; the first cached run of a fresh cache dir also decodes once
            results[name].append(run(folder, name == "cached", args.epochs, work))
            row = results[name][-1]
            print(f"repeat {repeat + 1} {name:9s} epoch {row['epoch_s']:.2f} s ({row['images_per_s']:,.0f} images/s), "
                  f"run {row['wall_s']:.1f} s", flush=True)
    print("| path | train s/epoch | epochs/s | images/s | fit + test s |\n|---|---:|---:|---:|---:|")
    for name, rows in results.items():
        epoch = statistics.median(r["epoch_s"] for r in rows)
        print(f"| {name} | {epoch:.2f} | {1 / epoch:.2f} | {statistics.median(r['images_per_s'] for r in rows):,.0f} | "
              f"{statistics.median(r['wall_s'] for r in rows):.1f} |")


if __name__ == "__main__":
    main()
