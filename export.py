"""Export a checkpoint: python export.py ckpt_path=outputs/runs/.../checkpoints/best.ckpt [format=onnx|torchscript|safetensors]."""

from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

from tinyvision.cli import run_script
from tinyvision.files import output_file


def main(cfg: DictConfig) -> None:
    # after the command line's check (run_script): a typo is answered before torch loads
    from tinyvision.config import validate_export
    from tinyvision.export import FORMATS, export, refuse_foreign_files
    from tinyvision.inference import load_classifier

    cfg = validate_export(cfg)  # resolved and checked once: typed settings from here on
    name = f"model{FORMATS[cfg.format]}"  # output= is checked before the model is loaded
    path = output_file("output", cfg.output, name, FORMATS[cfg.format]) if cfg.output else Path(cfg.paths.output_dir) / name
    refuse_foreign_files("output", cfg.output or str(path), path)
    classifier = load_classifier(cfg.ckpt_path)
    model, card = export(classifier, cfg.format, path, source=str(cfg.ckpt_path))
    Console().print(f"written: {model} ({model.stat().st_size / 1e6:.1f} MB) and {card}")
    if cfg.format == "onnx":
        Console().print(f"classify with it: python predict.py ckpt_path={model} inputs=photo.png")


if __name__ == "__main__":
    run_script("export", main)
