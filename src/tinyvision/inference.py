"""Use a trained model: load a checkpoint or an exported ONNX file, and rebuild its data pipeline (photos are prepared
in data/photos.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from tinyvision.boundaries import input_file, is_state_dict_mismatch, load_torch, looks_like_text, weights_do_not_fit
from tinyvision.data.datamodule import data_module_settings
from tinyvision.errors import ConfigError
from tinyvision.files import CARD_SUFFIX, PathsSettings, card_path
from tinyvision.module import ImageClassifier
from tinyvision.preprocessing import InputDefinition
from tinyvision.schema import PositiveInt, Section, one_of, spec
from tinyvision.trainer import EvalTrainerSettings
from tinyvision.tta import MODES as TTA_MODES

ONNX_FIX = "give an .onnx file written by export.py (with its .onnx.json card beside it), or a .ckpt checkpoint"
CHECKPOINT_FIX = "give best.ckpt or last.ckpt from a run's checkpoints/ folder, e.g. ckpt_path=outputs/runs/<run>/checkpoints/best.ckpt"
# Settings that fetch weights when a model is built: a checkpoint holds its weights, so they are not fetched again
# (a model trained from model.weights=DEFAULT would otherwise be downloaded anew, or its file looked for, at each load).
WEIGHT_SOURCES = {"weights": None, "weights_path": None, "pretrained": False}


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> ImageClassifier:
    """Load a tinyvision checkpoint, or fail with one line naming the file and what is wrong with it (missing, empty,
    text, cut short, not Lightning's, not tinyvision's, or weights that do not fit the model its settings describe)."""
    if Path(path).suffix == ".onnx":  # predict.py runs exported models; eval and export need the checkpoint
        raise ConfigError(f"ckpt_path={path}: an exported ONNX model is for predict.py; here {CHECKPOINT_FIX}")
    checkpoint = load_torch("ckpt_path", path, "a PyTorch checkpoint", CHECKPOINT_FIX)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path={path}: it is not a Lightning checkpoint (it has no state_dict); {CHECKPOINT_FIX}")
    settings = checkpoint.get("hyper_parameters", {})
    if not isinstance(settings, dict) or not {"model", "data", "optimizer"} <= set(settings) or \
            not isinstance(settings["model"], dict):
        raise ConfigError(f"ckpt_path={path} is not a tinyvision checkpoint (it has no model and data settings); {CHECKPOINT_FIX}")
    model = {key: (WEIGHT_SOURCES[key] if key in WEIGHT_SOURCES else value) for key, value in settings["model"].items()}
    try:
        classifier = ImageClassifier.load_from_checkpoint(path, map_location=map_location, weights_only=True, model=model)
    except RuntimeError as error:
        if not is_state_dict_mismatch(error):
            raise
        raise weights_do_not_fit("ckpt_path", path, error, f"the model its settings describe ({describe(settings)})",
                                 "the file was edited or pieced together from two runs: " + CHECKPOINT_FIX) from None
    except ConfigError as error:  # the settings name a model this installation cannot build
        raise ConfigError(f"ckpt_path={path}: its model cannot be built here: {error}") from None
    classifier.hparams.model.update({key: value for key, value in settings["model"].items() if key in WEIGHT_SOURCES})
    classifier.eval()
    return classifier


def describe(settings: dict[str, Any]) -> str:
    """A checkpoint's model in a few words: 'LeNet, 1×28×28 images, 10 classes'."""
    model, data = settings.get("model") or {}, settings.get("data") or {}
    name = str(model.get("_target_", "?")).rsplit(".", 1)[-1] + (f" {model['name']}" if model.get("name") else "")
    size = data.get("image_size")
    size = f"{size}×{size}" if isinstance(size, int) else "×".join(map(str, size or []))
    return f"{name}, {data.get('channels')}×{size} images, {data.get('num_classes')} classes"


def load_onnx(path: str | Path):
    """An .onnx file from export.py, run by onnxruntime; an empty or text file is named before onnxruntime reads it."""
    file = input_file("ckpt_path", path, ONNX_FIX)
    with open(file, "rb") as handle:
        head = handle.read(512)
    if looks_like_text(head):
        raise ConfigError(f"ckpt_path={path} cannot be read: it is a text file, not an ONNX model; {ONNX_FIX}")
    return OnnxClassifier(file)


def datamodule_for(classifier: ImageClassifier, data: dict[str, Any] | None, data_dir: str):
    """The data module that evaluates ``classifier``: its training dataset, or ``data`` (another
    dataset config), either way with the checkpoint's channels, image size and normalization."""
    import hydra.utils

    trained = classifier.input.as_config()
    saved = (classifier.run_config or {}).get("data")
    settings = dict(data or saved or {})
    if not settings:
        raise ConfigError("the checkpoint holds no data config: choose a dataset with data=mnist|fashion|cifar10|folder")
    if data is None and "root" in settings and settings.get("dataset"):
        settings["root"] = data_dir  # tensor datasets are looked up under this machine's data dir
    if settings.get("num_classes") not in (None, trained["num_classes"]):
        raise ConfigError(
            f"data.num_classes={settings['num_classes']} but the checkpoint's model has {trained['num_classes']} classes: "
            "evaluate on a dataset with the same classes"
        )
    for key in ("channels", "image_size", "num_classes"):
        settings[key] = trained[key]
    settings["test_every_epoch"] = False
    folder = "FolderDataModule"
    if str(settings.get("_target_", "")).endswith(folder) and str((saved or {}).get("_target_", "")).endswith(folder):
        settings["model_classes"] = [str(name) for name in classifier.class_names]  # the class map it was trained with
    return hydra.utils.instantiate(data_module_settings(settings), _convert_="all")


class OnnxClassifier:
    """An exported ONNX file run by onnxruntime, called like the classifier: uint8 images in, logits out."""

    def __init__(self, path: str | Path):
        path = Path(path)
        card = card_path(path)
        if not card.is_file() and path.with_suffix(CARD_SUFFIX).is_file():
            card = path.with_suffix(CARD_SUFFIX)  # exports before cards were named after the whole file
        if not path.is_file():
            raise ConfigError(f"ckpt_path={path} does not exist: give a .ckpt file or an .onnx file written by export.py")
        if not card.is_file():
            raise ConfigError(f"ckpt_path={path} has no card {card_path(path).name} beside it: export it again with export.py")
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("an .onnx ckpt_path needs onnxruntime: pip install 'tinyvision[export]'") from None
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for a broken file
            reason = str(error).splitlines()[0][:200]
            raise ConfigError(f"ckpt_path={path} cannot be read as an ONNX model ({reason}): is it truncated? export it again") from None
        try:
            self.card = json.loads(card.read_text())
            self.input, self.class_names = InputDefinition.from_config(self.card["data"]), self.card["class_names"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise ConfigError(f"ckpt_path={path}: its card {card} is not an export card ({type(error).__name__}): "
                              "export the model again with export.py") from None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(["logits"], {"images": images.to(torch.uint8).cpu().numpy()})
        return torch.from_numpy(logits)


class EvalSettings(Section):
    """eval.py's keys (conf/eval.yaml); ``data`` is checked as training's (null: the checkpoint's own)."""

    paths: PathsSettings
    data: dict[str, Any] | None = None
    trainer: EvalTrainerSettings = Field(default_factory=EvalTrainerSettings)

    ckpt_path: str = spec("the path of a .ckpt file", "outputs/runs/<run>/checkpoints/best.ckpt")
    batch_size: PositiveInt | None = spec("a whole number of images, 1 or more (null: the data's own eval batch)", 1024, 1024)
    top_k: PositiveInt = spec("a whole number, 1 or more", 3, 3)
    tta: Literal[TTA_MODES] = spec(one_of(TTA_MODES), "flip", "none")
    seed: int = spec("a whole number, 0 or more", 42, 42, ge=0)


class PredictSettings(Section):
    """predict.py's keys (conf/predict.yaml)."""

    paths: PathsSettings | None = None

    ckpt_path: str = spec("the path of a .ckpt file, or of an .onnx file from export.py", "outputs/runs/<run>/checkpoints/best.ckpt")
    inputs: str = spec("an image file or a folder of images", "photos/")
    top_k: PositiveInt = spec("a whole number, 1 or more", 3, 3)
    output: str | None = spec("null or the path of a JSON file", "predictions.json", None)
    style: Literal["auto", "digit", "clothing", "plain"] = spec("auto, digit, clothing or plain", "auto", "auto")
