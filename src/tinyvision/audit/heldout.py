"""A k-fold job's held-out probabilities (heldout.csv in its run folder) and a sweep's folds stitched together.

Each row is one image of the fold that validated the job, predicted by the job's best checkpoint (the one its final
test read): its key (``index`` in the dataset's training split, or ``path`` inside a folder's train/), its given
label, and one probability per class. The folds of a configuration cover its training images once each."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinyvision.errors import ConfigError
from tinyvision.files import METRICS_FILE, replacing

HELDOUT_FILE = "heldout.csv"


def write_heldout(run_dir: Path, classifier, datamodule) -> dict:
    """heldout.csv for the validation fold, with the classifier as it is (the best checkpoint's weights after the
    final test); returns what metrics.json says of it."""
    rows = datamodule.split_index["val"].tolist()
    if datamodule.splits:  # the images are held: in batches, on their device
        images, labels = datamodule.splits["val"]
        batches = ((images[i:i + 1024], labels[i:i + 1024]) for i in range(0, len(images), 1024))
    else:  # a streamed folder: its validation loader, in order
        batches = iter(datamodule.val_dataloader())
    probabilities, given = [], []
    classifier.eval()
    with torch.inference_mode():
        for batch_images, batch_labels in batches:
            logits = classifier(batch_images.to(classifier.device))
            probabilities.append(logits.float().softmax(dim=1).cpu())
            given.append(torch.as_tensor(batch_labels).cpu())
    probabilities, given = torch.cat(probabilities).numpy(), torch.cat(given).numpy()
    keys = [datamodule.pool_keys[row] for row in rows] if datamodule.pool_keys is not None else rows
    column = "path" if datamodule.pool_keys is not None else "index"
    with replacing(run_dir / HELDOUT_FILE) as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([column, "given", *(f"p{j}" for j in range(probabilities.shape[1]))])
        for key, label, row in zip(keys, given.tolist(), probabilities):
            writer.writerow([key, label, *(f"{p:.6g}" for p in row)])
    return {"file": HELDOUT_FILE, "images": len(rows), "fold": datamodule.fold, "folds": datamodule.folds, "key": column}


@dataclass
class Stitched:
    keys: list  # per image: its index (int) or path (str)
    key_column: str  # "index" or "path"
    labels: np.ndarray
    probabilities: np.ndarray
    jobs: list[Path]  # the run folders, fold 0 first


def stitch(jobs: list[Path]) -> Stitched:
    """The held-out rows of one configuration's fold jobs, one per fold, in fold order; refused when a fold is missing
    or repeated, a job has no heldout.csv, or the folds do not cover each image once."""
    by_fold: dict[int, Path] = {}
    folds = None
    for job in jobs:
        metrics = json.loads((job / METRICS_FILE).read_text())
        heldout = metrics.get("heldout")
        if not heldout or not (job / HELDOUT_FILE).is_file():
            raise ConfigError(f"{job} has no {HELDOUT_FILE} (its metrics.json names none): run the sweep's jobs again with "
                              "this version of tinyvision, which writes one for each fold")
        if folds is not None and heldout["folds"] != folds:
            raise ConfigError(f"{job}: data.folds={heldout['folds']} beside jobs of data.folds={folds}: folds of different "
                              "cross-validations are mixed; audit one k-fold sweep at a time")
        folds = heldout["folds"]
        if heldout["fold"] in by_fold:
            raise ConfigError(f"{job} and {by_fold[heldout['fold']]} both hold fold {heldout['fold']}: jobs of different "
                              "runs are mixed; audit one configuration's folds")
        by_fold[heldout["fold"]] = job
    missing = [f for f in range(folds or 0) if f not in by_fold]
    if missing:
        raise ConfigError(f"fold {missing[0]} of data.folds={folds} has no finished job: the audit needs every fold's "
                          f"held-out probabilities; train it (data.fold={missing[0]}) in the sweep")
    keys, labels, probabilities, column = [], [], [], None
    for fold in range(folds):
        with open(by_fold[fold] / HELDOUT_FILE, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or header[0] not in ("index", "path") or header[1] != "given":
                raise ConfigError(f"{by_fold[fold] / HELDOUT_FILE} is not a held-out probabilities file (its header is "
                                  f"{header}): train the fold again")
            column = header[0]
            try:
                for row in reader:
                    keys.append(int(row[0]) if column == "index" else row[0])
                    labels.append(int(row[1]))
                    probabilities.append([float(p) for p in row[2:]])
            except (ValueError, IndexError):
                raise ConfigError(f"{by_fold[fold] / HELDOUT_FILE} is cut short or damaged: train fold {fold} again") from None
    if len(set(keys)) != len(keys):
        raise ConfigError("the folds hold some images more than once: jobs of different runs are mixed")
    widths = {len(p) for p in probabilities}
    if len(widths) != 1:
        raise ConfigError("the folds' heldout.csv files have different numbers of classes: jobs of different runs are mixed")
    return Stitched(keys, column, np.asarray(labels), np.asarray(probabilities), [by_fold[f] for f in range(folds)])
