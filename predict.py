"""Classify image files: python predict.py ckpt_path=PATH inputs=FILE_OR_DIR [output=predictions.json].

The predictions go to predictions.json in the command's folder (outputs/predict/<time>/) unless output= names another
file, or output=null writes none.

PATH is a tinyvision checkpoint (.ckpt) or an ONNX file written by export.py (.onnx, with its JSON card)."""

import json
import os
import sys
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from tinyvision.cli import run_script
from tinyvision.errors import ConfigError
from tinyvision.files import output_file, write_json


def main(cfg: DictConfig) -> None:
    rows = predict(cfg)
    if any("error" in row for row in rows):
        sys.exit(1)  # some inputs could not be read: their rows say why


def predict(cfg: DictConfig) -> list[dict]:
    # after the command line's check (run_script): a typo is answered before torch loads
    import torch

    from tinyvision.boundaries import image_problem
    from tinyvision.config import validate_predict
    from tinyvision.data.photos import find_images, preparation_style, prepare_image
    from tinyvision.image_folders import is_regular_file
    from tinyvision.inference import load_classifier, load_onnx

    cfg = validate_predict(cfg)  # resolved and checked once: typed settings from here on
    # Where the predictions go is checked before any work: no prediction is made to be lost to a typo in it.
    output = predictions_file(cfg.output) if cfg.output else None
    if str(cfg.ckpt_path).endswith(".onnx"):  # exported by export.py, run by onnxruntime
        classifier = load_onnx(cfg.ckpt_path)
    else:
        classifier = load_classifier(cfg.ckpt_path)
    if not Path(cfg.inputs).exists():
        raise ConfigError(f"inputs={cfg.inputs} does not exist: give an image file or a folder of images, e.g. inputs=photos/")
    if not Path(cfg.inputs).is_dir() and not is_regular_file(cfg.inputs):  # a FIFO would block its reader forever
        raise ConfigError(f"inputs={cfg.inputs} is not a regular file (a FIFO, socket or device): give an image file or a "
                          "folder of images, e.g. inputs=photos/")
    files = find_images(cfg.inputs)
    if not files:
        raise ConfigError(f"inputs={cfg.inputs} holds no image files: give a folder of PNG, JPEG, BMP, GIF, TIFF or WebP "
                          "images, e.g. inputs=photos/")
    style = preparation_style(classifier.input.dataset) if cfg.style == "auto" else cfg.style
    names = [str(n) for n in classifier.class_names]
    rows, problems = [], []
    for path in files:
        try:
            image = prepare_image(path, classifier.input, style)
        except Exception as error:  # unreadable, missing or not an image: report it and go on
            problems.append((path, image_problem(path, error)))
            rows.append({"file": str(path), "error": f"{type(error).__name__}: {error}"})
            continue
        with torch.inference_mode():
            probabilities = classifier(image.unsqueeze(0)).softmax(1)[0]  # the classifier normalizes
        top = probabilities.topk(min(cfg.top_k, len(names)))
        rows.append({
            "file": str(path),
            "class": names[top.indices[0]],
            "probability": round(top.values[0].item(), 4),
            "top": [{"class": names[i], "probability": round(p, 4)} for p, i in zip(top.values.tolist(), top.indices.tolist())],
        })
    if len(problems) == len(files):  # nothing to show: the input, not some files of it, is wrong
        raise ConfigError(unreadable_inputs(cfg.inputs, problems))
    if output is not None:  # the result first: the console may be gone (| true), the file must not be lost with it
        write_json(output, {"ckpt_path": str(cfg.ckpt_path), "predictions": rows})
    base = Path(cfg.inputs) if Path(cfg.inputs).is_dir() else Path(cfg.inputs).parent
    show(rows, base, output)
    return rows


def predictions_file(value: str) -> Path:
    """Where output= writes: a .json file that is new or a previous predict.py output, never another file (the
    checkpoint, an image, a model's card) that a typo in it would overwrite."""
    path = output_file("output", value, "predictions.json", ".json")
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            previous = None
        if not (isinstance(previous, dict) and "predictions" in previous):
            raise ConfigError(f"output={value}: {path} exists and is not a predictions file of predict.py; it is kept as it "
                              "is: choose a new file, e.g. output=predictions.json")
    return path


def unreadable_inputs(inputs: str, problems: list[tuple[Path, str]]) -> str:
    """The one line for inputs of which no file is an image that can be read."""
    fix = "give PNG, JPEG, BMP, GIF, TIFF or WebP images"
    if len(problems) == 1 and not Path(inputs).is_dir():
        return f"inputs={inputs}: it {problems[0][1]}: {fix}, e.g. inputs=photo.png"
    listed = "; ".join(f"{path.name} {reason}" for path, reason in problems[:3])
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    return f"inputs={inputs}: none of its {len(problems)} image files can be read ({listed}{more}): {fix}, e.g. inputs=photos/"


def show(rows: list[dict], base: Path, output: Path | None) -> None:
    table = Table("file", "class", "probability", "top", title=f"predictions for {base}", title_justify="left")
    for row in rows:
        name = os.path.relpath(row["file"], base)
        if "error" in row:
            table.add_row(name, "[red]error[/]", "", f"[red]{row['error']}[/]")
        else:
            top = ", ".join(f"{t['class']} {t['probability']:.2f}" for t in row["top"])
            table.add_row(name, row["class"], f"{row['probability']:.3f}", top)
    console = Console()
    console.print(table)
    if output is not None:
        console.print(f"written: {output}")


if __name__ == "__main__":
    run_script("predict", main)
