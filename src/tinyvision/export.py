"""Take a trained model out of tinyvision: ONNX, TorchScript or safetensors, each beside a JSON card of
what the model expects (an exported ONNX file is run back by ``tinyvision.inference.OnnxClassifier``).

The exported model is the whole classifier, normalization included: it takes images as stored (uint8,
N × C × H × W, 0-255) and returns class scores (logits), so a user needs no mean or std to run it; the card
still lists them, with the channels, image size and class names.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from tinyvision.errors import ConfigError
from tinyvision.files import PathsSettings, card_path, replacing, write_atomic
from tinyvision.module import ImageClassifier
from tinyvision.schema import Section, one_of, spec

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}


def model_card(classifier: ImageClassifier, fmt: str, source: str | None = None) -> dict[str, Any]:
    """What the exported file expects and returns, for someone without tinyvision."""
    given = classifier.input
    height, width = given.height_width
    return {
        "format": fmt,
        "input": {"name": "images", "dtype": "uint8", "shape": ["batch", given.channels, height, width],
                  "range": [0, 255], "normalized_inside": fmt != "safetensors"},
        "output": {"name": "logits", "shape": ["batch", given.num_classes], "softmax": "not applied"},
        "channels": given.channels,
        "image_size": [height, width],
        "mean": list(given.mean),  # on [0, 1] values: (image / 255 - mean) / std, per channel
        "std": list(given.std),
        "class_names": [str(name) for name in classifier.class_names],
        "data": given.as_config(),  # tinyvision's input definition: predict.py prepares photos by it
        "model": dict(classifier.hparams.model),  # the architecture's settings, for safetensors
        "source": source,
    }


def example_images(classifier: ImageClassifier, batch: int = 2) -> torch.Tensor:
    height, width = classifier.input.height_width
    return torch.randint(0, 256, (batch, classifier.input.channels, height, width), dtype=torch.uint8)


def export(classifier: ImageClassifier, fmt: str, path: Path, source: str | None = None) -> tuple[Path, Path]:
    """Write the model to ``path`` (which must end in the format's suffix) and its card beside it; each file
    appears whole or not at all."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt}: one of {', '.join(FORMATS)}, e.g. format=onnx")
    if path.suffix != FORMATS[fmt]:
        raise ConfigError(f"output={path}: a {fmt} export ends in {FORMATS[fmt]}, e.g. output={path.with_suffix(FORMATS[fmt])}")
    classifier = classifier.cpu().eval()
    with replacing(path) as partial:
        {"onnx": _onnx, "torchscript": _torchscript, "safetensors": _safetensors}[fmt](classifier, partial)
    card = card_path(path)
    write_atomic(card, json.dumps(model_card(classifier, fmt, source), indent=2) + "\n")
    return path, card


def refuse_foreign_files(key: str, value: str, path: Path) -> None:
    """An export replaces only an earlier export: the model file and its card, the card saying it is one. Any other
    file under either name (a checkpoint, a photo, a model of another tool) is kept, and the command refused before
    the model is loaded."""
    card = card_path(path)
    for existing in (path, card):
        if existing.exists() and not _earlier_export_card(card):
            raise ConfigError(f"{key}={value}: {existing} exists and is not a model written by export.py (it has no card "
                              f"{card.name} of one); it is kept as it is: choose a new file, e.g. "
                              f"{key}={path.with_name(path.stem + '_export' + path.suffix)}")


def _earlier_export_card(card: Path) -> bool:
    try:
        written = json.loads(card.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(written, dict) and written.get("format") in FORMATS and isinstance(written.get("input"), dict)


def _onnx(classifier: ImageClassifier, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  torch's ONNX exporter needs it
    except ImportError:
        raise ConfigError("format=onnx needs the onnx and onnxscript packages: pip install 'tinyvision[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals, none for the user to act on
        program = torch.onnx.export(classifier, (example_images(classifier),), dynamo=True, verbose=False,
                                    input_names=["images"], output_names=["logits"], dynamic_shapes={"images": {0: batch}})
    program.save(str(path))


def _torchscript(classifier: ImageClassifier, path: Path) -> None:
    # torch.jit (and so Lightning's to_torchscript) is deprecated in favour of torch.export, but TorchScript
    # is still what C++ (libtorch) and older serving stacks load; the README says so, and the deprecation
    # warnings are not repeated at every export. Lightning's to_torchscript traces the module detached from
    # any Trainer; the trace records the uint8 path, normalization included.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = classifier.to_torchscript(method="trace", example_inputs=example_images(classifier))
        # Into memory, then written by Python: torch.jit.save's own C++ file writer aborts the whole process on a
        # full disk (exit 134, no Python exception), where Python's write raises the OSError replacing() answers.
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    _write_bytes(path, buffer.getbuffer())


def _safetensors(classifier: ImageClassifier, path: Path) -> None:
    try:
        from safetensors.torch import save
    except ImportError:
        raise ConfigError("format=safetensors needs the safetensors package: pip install 'tinyvision[export]'") from None
    # The network's weights (normalization is in the card), not the metrics' running state (train_acc.tp, ...)
    weights = {key: value for key, value in classifier.state_dict().items() if key.startswith("net.")}
    # safetensors' own writer raises its SafetensorError on a full disk or a read-only folder, not an OSError
    _write_bytes(path, save({key: value.contiguous() for key, value in weights.items()}))


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    with open(path, "wb") as file:
        file.write(data)


class ExportSettings(Section):
    """export.py's keys (conf/export.yaml)."""

    paths: PathsSettings

    ckpt_path: str = spec("the path of a .ckpt file", "outputs/runs/<run>/checkpoints/best.ckpt")
    format: Literal[tuple(FORMATS)] = spec(one_of(tuple(FORMATS)), "onnx", "onnx")
    output: str | None = spec("null or the path of the file to write", "model.onnx", None)
