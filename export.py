"""Export a checkpoint: python export.py ckpt_path=outputs/runs/.../checkpoints/best.ckpt [format=onnx|torchscript|safetensors]."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig
from rich.console import Console

from tinyvision.cli import exit_bad_input, precheck
from tinyvision.errors import TinyVisionError
from tinyvision.export import FORMATS, export
from tinyvision.files import output_file
from tinyvision.inference import load_classifier
from tinyvision.schema import validate_export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        validate_export(cfg)
        name = f"model{FORMATS[cfg.format]}"  # output= is checked before the model is loaded
        path = output_file("output", cfg.output, name, FORMATS[cfg.format]) if cfg.output else Path(cfg.paths.output_dir) / name
        classifier = load_classifier(cfg.ckpt_path)
        model, card = export(classifier, cfg.format, path, source=str(cfg.ckpt_path))
    except TinyVisionError as error:
        exit_bad_input(error)
    Console().print(f"written: {model} ({model.stat().st_size / 1e6:.1f} MB) and {card}")
    if cfg.format == "onnx":
        Console().print(f"classify with it: python predict.py ckpt_path={model} inputs=photo.png")


if __name__ == "__main__":
    # A command line Hydra cannot compose gets the same one-line answer; the output folder is claimed here.
    sys.argv[1:] = precheck("export", sys.argv[1:])
    main()
