"""What each per-step piece of a tinyvision training step costs, measured alone (written to BENCHMARKS.md by hand).

    python bench/step_costs.py [--device cpu|cuda] [--batch 256]

Each piece runs on a LeNet-sized batch (256 Fashion-MNIST images, 10 classes) with torch.utils.benchmark,
which reports the median of many timed runs. The pieces are the ones Lightning and tinyvision add to a
hand-written step; the model's forward/backward/optimizer step is timed too, for scale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    import torch
    from torch.nn import functional as F
    from torch.utils.benchmark import Timer
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy

    sys.path.insert(0, str(ROOT / "src"))
    from tinyvision.models import LeNet

    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 1, 28, 28), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    model = LeNet(in_channels=1, num_classes=10, image_size=28).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scale, shift = torch.full((1, 1, 1, 1), 1 / 255, device=device), torch.zeros((1, 1, 1, 1), device=device)
    floats = torch.addcmul(shift, images.float(), scale)
    logits = model(floats).detach()
    loss = F.cross_entropy(logits, labels)
    record = torch.tensor([-1.0, -1.0, 0.0, -1.0, 0.0], dtype=torch.float64, device=device)

    def fold_loss_record():  # what StopOnNonFiniteLoss does every step on an accelerator
        value = loss.double()
        finite, healthy = torch.isfinite(value), record[0] < 0
        first_bad, still = ~finite & healthy, finite & healthy
        return torch.where(torch.stack([first_bad, first_bad, first_bad, still, still]),
                           torch.stack([torch.full_like(value, 7), torch.full_like(value, 3), value,
                                        torch.full_like(value, 7), value]), record)

    def train_step():
        optimizer.zero_grad()
        F.cross_entropy(model(floats), labels).backward()
        optimizer.step()

    checked_acc, unchecked_acc = MulticlassAccuracy(10, average="micro").to(device), \
        MulticlassAccuracy(10, average="micro", validate_args=False).to(device)
    checked_mean, unchecked_mean = MeanMetric(nan_strategy="warn").to(device), MeanMetric(nan_strategy="disable").to(device)
    weight = torch.full_like(loss, args.batch)
    pieces = {
        "model forward + backward + SGD step (for scale)": train_step,
        "uint8 -> normalized float32 (one addcmul)": lambda: torch.addcmul(shift, images.float(), scale),
        "loss read on the host, float(loss) (the NaN check on a CPU)": lambda: float(loss),
        "loss folded into the device record (the NaN check on a GPU)": fold_loss_record,
        "accuracy update, validate_args=True (before)": lambda: checked_acc.update(logits, labels),
        "accuracy update, validate_args=False (now)": lambda: unchecked_acc.update(logits, labels),
        "mean-loss update, NaN check on (before)": lambda: checked_mean.update(loss, weight=args.batch),
        "mean-loss update, NaN check off (now)": lambda: unchecked_mean.update(loss, weight=weight),
    }
    print(f"| piece ({args.device}, batch {args.batch}) | µs per step |")
    print("|---|---:|")
    for name, function in pieces.items():
        timer = Timer("f()", globals={"f": function})
        microseconds = timer.blocked_autorange(min_run_time=1.0).median * 1e6
        print(f"| {name} | {microseconds:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
