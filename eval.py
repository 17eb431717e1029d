"""Test a checkpoint: python eval.py ckpt_path=outputs/runs/.../checkpoints/best.ckpt [data=...]."""

from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torchmetrics.functional.classification import multiclass_confusion_matrix

from tinyvision.cli import run_script
from tinyvision.config import validate_eval
from tinyvision.files import write_json
from tinyvision.inference import datamodule_for, load_classifier
from tinyvision.pictures import confusion_figure
from tinyvision.report import PER_CLASS_FILE, classification_report, write_per_class_csv
from tinyvision.tta import probabilities as tta_probabilities


def evaluate(cfg: DictConfig) -> dict:
    cfg = validate_eval(cfg)  # resolved and checked once: typed settings from here on
    classifier = load_classifier(cfg.ckpt_path)
    datamodule = datamodule_for(classifier, cfg.data, cfg.paths.data_dir)
    datamodule.eval_batch_size = cfg.batch_size
    datamodule.setup("test")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier.to(device)
    probabilities, labels = [], []
    with torch.inference_mode():
        for images, batch_labels in datamodule.test_dataloader():
            # uint8: the classifier applies its own normalization; tta averages over flipped/shifted views
            probabilities.append(tta_probabilities(classifier, images.to(device), cfg.tta).cpu())
            labels.append(batch_labels.cpu())
    probabilities, labels = torch.cat(probabilities), torch.cat(labels)
    names = [str(n) for n in (datamodule.class_names or classifier.class_names)]
    matrix = multiclass_confusion_matrix(probabilities.argmax(1), labels, num_classes=len(names))
    per_class = (matrix.diag() / matrix.sum(1).clamp(min=1)).tolist()
    accuracy = matrix.diag().sum().item() / max(matrix.sum().item(), 1)
    report = classification_report(probabilities, labels, names, cfg.top_k)
    run_dir = cfg.paths.output_dir
    metrics = {
        "ckpt_path": str(cfg.ckpt_path),
        "dataset": getattr(datamodule, "dataset", "folder"),
        "test/acc": accuracy,
        "images": len(labels),
        "tta": cfg.tta,
        "per_class_acc": dict(zip(names, per_class)),
        "report": report,  # per-class precision/recall/F1/support, macro and weighted, top-k, ECE
        "confusion_matrix": matrix.tolist(),
        "class_names": names,
    }
    write_json(f"{run_dir}/metrics.json", metrics)
    write_per_class_csv(Path(run_dir) / PER_CLASS_FILE, report)
    figure = confusion_figure(matrix, names, f"test accuracy {accuracy:.2%}")
    figure.savefig(f"{run_dir}/confusion_matrix.png", dpi=120)
    show(metrics, matrix, run_dir)
    return metrics


def show(metrics: dict, matrix: torch.Tensor, run_dir: str) -> None:
    console = Console()
    names = metrics["class_names"]
    report = metrics["report"]
    top_k = next(key for key in report if key.startswith("top"))
    console.print(f"[bold]test accuracy[/] {metrics['test/acc']:.2%} on {metrics['images']:,} images of {metrics['dataset']}; "
                  f"{top_k.replace('_', ' ')} {report[top_k]:.2%}; expected calibration error {report['ece']:.4f}")
    per_class = Table("class", "precision", "recall (accuracy)", "F1", "support", title="per class", title_justify="left")
    for name, row in report["per_class"].items():
        per_class.add_row(name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
    for average in ("macro", "weighted"):
        row = report[average]
        per_class.add_row(f"[italic]{average} avg[/]", f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                          str(report["images"]))
    console.print(per_class)
    confusion = Table("true \\ predicted", *[str(i) for i in range(len(names))], title="confusion matrix",
                      title_justify="left")
    for index, (name, row) in enumerate(zip(names, matrix.tolist())):
        confusion.add_row(f"{index} {name}", *[f"[bold]{v}[/]" if i == index else str(v) for i, v in enumerate(row)])
    console.print(confusion)
    console.print(f"written: {run_dir}/metrics.json, {run_dir}/{PER_CLASS_FILE}, {run_dir}/confusion_matrix.png")


if __name__ == "__main__":
    run_script("eval", evaluate)
