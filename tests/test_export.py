"""Export: ONNX and TorchScript give the classifier's own outputs for every seed architecture, safetensors
holds its weights, predict.py reads the ONNX file, and a broken export is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinyvision.export import example_images, export
from tinyvision.inference import OnnxClassifier
from tinyvision.module import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
GREY = {"channels": 1, "image_size": 28, "num_classes": 10, "mean": [0.2860], "std": [0.3530], "dataset": "fashion"}
COLOUR = {"channels": 3, "image_size": 32, "num_classes": 10, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
          "dataset": "cifar10"}
ARCHITECTURES = {"LeNet": GREY, "ConvNet": GREY, "MLP": GREY, "CifarNet": COLOUR, "CifarNetV3": COLOUR, "VGG16": COLOUR}


def classifier_of(architecture: str, data: dict) -> ImageClassifier:
    torch.manual_seed(0)
    model = {"_target_": f"tinyvision.models.{architecture}", "channels_last": True}
    optimizer = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    classifier = ImageClassifier(model=model, data=data, optimizer=optimizer).eval()
    classifier.class_names = [f"c{i}" for i in range(10)]  # what a fit's data module or a checkpoint gives it
    return classifier


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_onnx_and_torchscript_give_the_classifiers_outputs(architecture, tmp_path):
    classifier = classifier_of(architecture, ARCHITECTURES[architecture])
    images = example_images(classifier, batch=5)  # another batch size than the export's example
    with torch.inference_mode():
        expected = classifier(images)
    onnx_file, card = export(classifier, "onnx", tmp_path / "model.onnx")
    assert (OnnxClassifier(onnx_file)(images) - expected).abs().max() <= 1e-4
    scripted, _ = export(classifier, "torchscript", tmp_path / "model.pt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(scripted))
    with torch.inference_mode():
        assert (loaded(images) - expected).abs().max() <= 1e-4
    described = json.loads(card.read_text())
    assert described["input"]["dtype"] == "uint8" and described["channels"] == ARCHITECTURES[architecture]["channels"]
    assert described["class_names"] == [f"c{i}" for i in range(10)] and described["mean"] == ARCHITECTURES[architecture]["mean"]


def test_safetensors_holds_the_weights(tmp_path):
    from safetensors.torch import load_file

    classifier = classifier_of("LeNet", GREY)
    path, card = export(classifier, "safetensors", tmp_path / "model.safetensors")
    rebuilt = classifier_of("LeNet", GREY)
    with torch.no_grad():
        for parameter in rebuilt.parameters():
            parameter.zero_()
    images = example_images(classifier, batch=3)
    with torch.inference_mode():
        assert not torch.equal(rebuilt(images), classifier(images))
    weights = load_file(str(path))
    assert set(weights) == {f"net.{key}" for key in classifier.net.state_dict()}  # the network alone, no metric state
    rebuilt.net.load_state_dict({key.removeprefix("net."): value for key, value in weights.items()})
    with torch.inference_mode():
        assert torch.equal(rebuilt(images), classifier(images))
    assert json.loads(card.read_text())["model"]["_target_"] == "tinyvision.models.LeNet"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_predict_gives_the_same_classes_from_the_checkpoint_and_the_onnx_file(make_config, tmp_path):
    from PIL import Image

    from tinyvision.training import train

    run_dir = tmp_path / "run"
    metrics = train(make_config("model=lenet", "data.val_size=50", "trainer.max_epochs=1", run_dir=run_dir))
    checkpoint = metrics["best_checkpoint"]
    exported = run("export.py", f"ckpt_path={checkpoint}", "format=onnx", f"hydra.run.dir={tmp_path / 'export'}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    onnx_file = tmp_path / "export" / "model.onnx"
    photos = tmp_path / "photos"
    photos.mkdir()
    generator = torch.Generator().manual_seed(1)
    for index in range(6):
        pixels = torch.randint(0, 256, (40, 40), dtype=torch.uint8, generator=generator).numpy()
        Image.fromarray(pixels).save(photos / f"{index}.png")
    answers = {}
    for name, path in (("checkpoint", checkpoint), ("onnx", onnx_file)):
        result = run("predict.py", f"ckpt_path={path}", f"inputs={photos}", f"output={tmp_path / name}.json",
                     f"hydra.run.dir={tmp_path / ('predict_' + name)}")
        assert result.returncode == 0, result.stderr[-3000:]
        answers[name] = json.loads((tmp_path / f"{name}.json").read_text())["predictions"]
    assert [row["class"] for row in answers["onnx"]] == [row["class"] for row in answers["checkpoint"]]
    for mine, theirs in zip(answers["onnx"], answers["checkpoint"]):
        assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-3)

    truncated = tmp_path / "export" / "truncated.onnx"
    truncated.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])
    (tmp_path / "export" / "truncated.onnx.json").write_text((tmp_path / "export" / "model.onnx.json").read_text())
    result = run("predict.py", f"ckpt_path={truncated}", f"inputs={photos}", f"hydra.run.dir={tmp_path / 'predict_bad'}")
    assert result.returncode == 2 and f"error: ckpt_path={truncated} cannot be read as an ONNX model" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_an_export_onto_a_full_disk_is_one_line_and_keeps_the_earlier_export(fmt, tmp_path, monkeypatch):
    """Every writer's file fills up after 1,000 bytes, as a full disk does: the one WriteFailed line, no .partial, the
    earlier export kept. (TorchScript's own C++ writer aborted the process; safetensors' raised its own error.)"""
    from conftest import full_disk
    from tinyvision.files import WriteFailed

    classifier = classifier_of("LeNet", GREY)
    target = tmp_path / f"model{'.pt' if fmt == 'torchscript' else '.' + fmt}"
    export(classifier, fmt, target)
    earlier = target.read_bytes()
    full_disk(monkeypatch, room=1000)
    with pytest.raises(WriteFailed, match=r"cannot write .*: No space left on device \(the previous file is kept\)"):
        export(classifier, fmt, target)
    monkeypatch.undo()
    assert target.read_bytes() == earlier
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".partial")]
