"""The audit of a k-fold sweep folder: label_issues.csv and label_issues.png (confident learning on the stitched
out-of-fold probabilities), duplicates.csv (exact and near duplicates, within training and between training and test),
the class counts, and audit.json; run at the end of a k-fold sweep and by audit.py (docs/audit.md)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from tinyvision.audit.confident import METHODS, find_label_issues
from tinyvision.audit.duplicates import duplicate_pairs
from tinyvision.audit.heldout import Stitched, stitch
from tinyvision.errors import ConfigError
from tinyvision.files import METRICS_FILE, PathsSettings, replacing, save_figure, write_json
from tinyvision.schema import PositiveInt, Section, one_of, spec

log = logging.getLogger(__name__)
IMBALANCE = 10  # a class this many times rarer than the commonest is warned of


class AuditSettings(Section):
    """audit.py's keys (conf/audit.yaml)."""

    paths: PathsSettings | None = None
    sweep: str = spec("the folder of a k-fold sweep (python train.py -m data.folds=5 'data.fold=range(5)')",
                      "outputs/multirun/<sweep>")
    method: Literal[METHODS] = spec(one_of(METHODS), "prune_by_noise_rate", "prune_by_noise_rate")
    top: PositiveInt = spec("a number of suspects for label_issues.png, 1 or more", 32, 32)
    duplicates: bool = spec("true or false", True, True)


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else []


def fold_groups(sweep_dir: Path) -> dict[str, list[Path]]:
    """The finished k-fold jobs of a sweep folder, by configuration (their overrides less data.fold)."""
    groups: dict[str, list[Path]] = {}
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        metrics_file = job / METRICS_FILE
        if not metrics_file.is_file():
            continue
        try:
            metrics = json.loads(metrics_file.read_text())
        except ValueError:
            continue
        if not isinstance(metrics, dict) or not metrics.get("heldout"):
            continue
        configuration = " ".join(o for o in _overrides(job) if not o.startswith(("data.fold=", "hydra.")))
        groups.setdefault(configuration, []).append(job)
    return groups


def audit_sweep(sweep_dir: Path, method: str = "prune_by_noise_rate", top: int = 32, duplicates: bool = True) -> list[dict]:
    """Audit each configuration of a k-fold sweep whose folds all finished; returns each audit's summary."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep={sweep_dir} is not a folder: give the folder of a k-fold sweep, e.g. "
                          "sweep=outputs/multirun/<sweep>")
    groups = fold_groups(sweep_dir)
    if not groups:
        raise ConfigError(f"sweep={sweep_dir} holds no finished k-fold job (no heldout.csv): run a k-fold sweep first, e.g. "
                          "python train.py -m data.folds=5 'data.fold=range(5)'")
    summaries, refusals = [], []
    for configuration, jobs in groups.items():
        try:
            stitched = stitch(jobs)
        except ConfigError as error:
            refusals.append(error)
            continue
        out = sweep_dir if len(groups) == 1 else sweep_dir / f"audit_{stitched.jobs[0].name}"
        summaries.append(_audit(stitched, out, configuration, method, top, duplicates))
    if not summaries:
        raise ConfigError(f"sweep={sweep_dir}: {refusals[0]}")
    return summaries


def audit_at_sweep_end(sweep_dir: Path) -> None:
    """The end of a sweep: when k-fold jobs finished every fold of a configuration, its audit, said in one line; an
    audit that cannot run is said and leaves the sweep's result alone (audit.py reruns it)."""
    if not fold_groups(sweep_dir):
        return
    try:
        summaries = audit_sweep(sweep_dir)
    except (ConfigError, OSError) as error:
        print(f"audit: not run ({error}); python audit.py sweep={sweep_dir} runs it", flush=True)
        return
    for summary in summaries:
        print(summary_line(summary), flush=True)


def summary_line(summary: dict) -> str:
    duplicates = summary.get("duplicates")
    found = (f"; {duplicates['pairs']} duplicate pairs ({duplicates['train_test']} between training and test): "
             f"{summary['folder']}/duplicates.csv") if duplicates else ""
    warnings = "".join(f"; warning: {w}" for w in summary["warnings"])
    return (f"audit: {summary['flagged']} of {summary['images']:,} training images likely mislabeled ({summary['method']}): "
            f"{summary['folder']}/label_issues.csv{found}{warnings}")


def _data_of(job: Path):
    """The data module of a fold's run, set up from its checkpoint's config (resolved: no Hydra needed)."""
    import hydra.utils
    import torch

    from tinyvision.data.datamodule import data_module_settings

    checkpoint = next((job / "checkpoints" / n for n in ("last.ckpt", "best.ckpt") if (job / "checkpoints" / n).is_file()), None)
    if checkpoint is None:
        return None
    config = torch.load(checkpoint, map_location="cpu", weights_only=True).get("config") or {}
    if not config.get("data"):
        return None
    datamodule = hydra.utils.instantiate(data_module_settings(config["data"]), _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def _audit(stitched: Stitched, out: Path, configuration: str, method: str, top: int, duplicates: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    issues = find_label_issues(stitched.labels, stitched.probabilities, method)
    datamodule = _data_of(stitched.jobs[0])
    classes = stitched.probabilities.shape[1]
    names = list(datamodule.class_names) if datamodule is not None else [str(j) for j in range(classes)]
    with replacing(out / "label_issues.csv") as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([stitched.key_column, "given", "suggested", "score"])
        for row, suggested, score in zip(issues.rows, issues.suggested, issues.score):
            writer.writerow([stitched.keys[row], names[stitched.labels[row]], names[suggested], f"{score:.4f}"])
    counts = np.bincount(stitched.labels, minlength=classes)
    warnings = []
    if counts.min() == 0 or counts.max() >= IMBALANCE * counts.min():
        rare = int(counts.argmin())
        warnings.append(f"class {names[rare]} has {counts[rare]} images, the commonest {counts.max()}: an imbalance a model "
                        "may answer by rarely predicting it (loss.class_weights=auto weighs the classes)")
    summary: dict[str, Any] = {
        "folder": str(out), "configuration": configuration, "jobs": [str(j) for j in stitched.jobs], "method": method,
        "images": len(stitched.labels), "flagged": len(issues.rows),
        "class_counts": {names[j]: int(counts[j]) for j in range(classes)}, "warnings": warnings,
        "confident_joint": np.round(issues.confident_joint, 1).tolist(),
    }
    pool = datamodule.pool if datamodule is not None else None
    if pool is not None:
        images = _images_of(stitched, datamodule, issues.rows[:top])
        titles = [f"given {names[stitched.labels[r]]} (p {1 - score:.0e})\n→ {names[s]}"
                  for r, s, score in zip(issues.rows[:top], issues.suggested[:top], issues.score[:top])]
        if len(images):
            _contact_sheet(out, images, titles)
        if duplicates:
            test = datamodule.splits.get("test", (None, None))[0]
            pairs = duplicate_pairs(pool[0], test.cpu() if test is not None else None)
            keys = datamodule.pool_keys
            with replacing(out / "duplicates.csv") as partial, open(partial, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["kind", "first_split", "first", "second_split", "second"])
                for kind, first_split, first, second_split, second in pairs:
                    shown = [keys[row] if keys is not None and split == "train" else row
                             for split, row in ((first_split, first), (second_split, second))]
                    writer.writerow([kind, first_split, shown[0], second_split, shown[1]])
            summary["duplicates"] = {"pairs": len(pairs), "exact": sum(p[0] == "exact" for p in pairs),
                                     "train_test": sum(p[3] == "test" for p in pairs)}
    write_json(out / "audit.json", summary)
    return summary


def _images_of(stitched: Stitched, datamodule, rows: np.ndarray):
    import torch

    if stitched.key_column == "index":
        index = [int(stitched.keys[r]) for r in rows]
    else:
        place = {key: i for i, key in enumerate(datamodule.pool_keys)}
        index = [place[stitched.keys[r]] for r in rows if stitched.keys[r] in place]
    return datamodule.pool[0][torch.tensor(index, dtype=torch.long)] if index else datamodule.pool[0][:0]


def _contact_sheet(out: Path, images, titles: list[str]) -> None:
    """label_issues.png, and the same figure in TensorBoard (out/tensorboard, under audit/label_issues)."""
    from torch.utils.tensorboard import SummaryWriter

    from tinyvision.pictures import as_picture, labelled_grid_figure

    figure = labelled_grid_figure(as_picture(images), titles)
    save_figure(figure, out / "label_issues.png")
    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_figure("audit/label_issues", figure, 0)
