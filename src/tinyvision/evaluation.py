"""Testing a checkpoint (eval.py): Lightning's test loop and the training run's TestReport, metrics.json, per_class.csv
and confusion_matrix.png in the command's folder, and the report on the console."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from tinyvision.callbacks import TestReport
from tinyvision.config import validate_eval
from tinyvision.errors import ConfigError
from tinyvision.files import save_figure, write_json
from tinyvision.inference import datamodule_for, load_classifier
from tinyvision.pictures import confusion_figure
from tinyvision.report import PER_CLASS_FILE, write_per_class_csv
from tinyvision.trainer import eval_trainer


def evaluate(cfg: DictConfig) -> dict:
    """The checkpoint tested as a training run's final test is: Lightning's test loop over the classifier's own
    test_step (TTA included) and the same TestReport, so metrics.json speaks the same keys as training's."""
    import lightning as L

    cfg = validate_eval(cfg)  # resolved and checked once: typed settings from here on
    L.seed_everything(cfg.seed, verbose=False)
    classifier = load_classifier(cfg.ckpt_path)
    classifier.test_tta = cfg.tta
    datamodule = datamodule_for(classifier, cfg.data, cfg.paths.data_dir)
    if cfg.batch_size is not None:
        datamodule.eval_batch_size = cfg.batch_size
    report = TestReport(top_k=cfg.top_k, pr_curves=False)
    trainer = eval_trainer(cfg.trainer, [report])
    test = test_within_limits(trainer, classifier, datamodule, cfg.trainer.limit_test_batches)
    names = [str(n) for n in classifier.class_names]
    run_dir = cfg.paths.output_dir
    metrics = {
        **{key: value for key, value in test.items() if key not in ("test/acc", "test/loss")},  # the report's figures
        "test/acc": test["test/acc"],
        "test/loss": test["test/loss"],
        "ckpt_path": str(cfg.ckpt_path),
        "dataset": getattr(datamodule, "dataset", "folder"),
        "images": report.report["images"],
        "tta": cfg.tta,
        "test_report": report.report,  # per class, macro and weighted averages, top-k, ECE (as training's metrics.json)
        "confusion_matrix": report.confusion_matrix.tolist(),
        "class_names": names,
    }
    write_json(f"{run_dir}/metrics.json", metrics)
    write_per_class_csv(Path(run_dir) / PER_CLASS_FILE, report.report)
    figure = confusion_figure(report.confusion_matrix, names, f"test accuracy {metrics['test/acc']:.2%}", normalized=True)
    save_figure(figure, Path(run_dir) / "confusion_matrix.png", dpi=120)
    show(metrics, report.confusion_matrix, run_dir)
    return metrics


def test_within_limits(trainer, classifier, datamodule, limit: float | int) -> dict:
    """Lightning's test; a fraction of the test below one batch is worded as the setting (Lightning raises it only
    once it has counted the batches)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return trainer.test(classifier, datamodule=datamodule, verbose=False)[0]
    except MisconfigurationException as error:
        if "limit_test_batches" not in str(error):
            raise
        raise ConfigError(f"trainer.limit_test_batches={limit}: less than one of the test's batches ({str(error).split('. ')[0]}); "
                          "give a larger fraction, or a number of batches, e.g. trainer.limit_test_batches=1") from None


def show(metrics: dict, matrix: torch.Tensor, run_dir: str) -> None:
    console = Console()
    names = metrics["class_names"]
    report = metrics["test_report"]
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
