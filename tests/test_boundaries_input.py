"""Every loader of a user's file fed a text file, an empty file and a cut-short copy of a real one: each answers with one
line naming the setting and what is wrong with the file (tinyvision.boundaries), never with the library's traceback."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from tinyvision.errors import ConfigError
from tinyvision.module import ImageClassifier

GREY = {"channels": 1, "image_size": 28, "num_classes": 10, "mean": [0.2860], "std": [0.3530], "dataset": "fashion"}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
DAMAGE = ("text", "empty", "truncated")
# What each loader says of each damaged file (predict's image inputs say "it is ..." of the one file given).
SAYS = {"text": r"it is a text file, not", "empty": r"the file is empty \(0 bytes\)", "truncated": r"it is cut short"}
IMAGE_SAYS = {"text": r"it is a text file, not an image", "empty": r"it is empty \(0 bytes\)", "truncated": r"it is cut short"}


def classifier(model: str = "LeNet") -> ImageClassifier:
    return ImageClassifier(model={"_target_": f"tinyvision.models.{model}"}, data=dict(GREY), optimizer=SGD)


def write_checkpoint(path: Path, net: ImageClassifier | None = None, settings: ImageClassifier | None = None) -> Path:
    """A checkpoint as Lightning writes one (what eval.py and predict.py read): the weights of ``net``, the settings
    (hyperparameters) of ``settings`` (by default the same model)."""
    net = net or classifier()
    settings = settings or net
    torch.save({"state_dict": net.state_dict(), "hyper_parameters": dict(settings.hparams), "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": L.__version__, "class_names": [str(i) for i in range(10)]}, path)
    return path


def damaged(kind: str, good: Path, folder: Path) -> Path:
    """A text file, an empty file or the first half of ``good``, under ``good``'s suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}{''.join(good.suffixes)}"
    if kind == "text":
        path.write_text("these are my notes, not the file you are looking for\n")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


def run(script: str, argv: list[str], tmp_path: Path, monkeypatch, capsys) -> tuple[int, list[str]]:
    from test_bad_input import run_in_process

    status, stderr = run_in_process(script, [*argv, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    return status, [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def good_files(tmp_path_factory, data_root) -> dict[str, Path]:
    """One real file of each kind a user gives: a checkpoint, an ONNX export with its card, weights, an image."""
    from tinyvision.export import export

    folder = tmp_path_factory.mktemp("good")
    files = {"ckpt": write_checkpoint(folder / "best.ckpt")}
    files["onnx"], _ = export(classifier(), "onnx", folder / "model.onnx")
    files["image"] = sorted((data_root / "ants_bees" / "ants").iterdir())[0]
    return files


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("script", ["eval", "predict"])
@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_checkpoint_is_one_line_naming_what_is_wrong(script, kind, good_files, tmp_path, monkeypatch, capsys):
    path = damaged(kind, good_files["ckpt"], tmp_path / "files")
    argv = [f"ckpt_path={path}"] + ([f"inputs={good_files['image']}"] if script == "predict" else [])
    status, lines = run(script, argv, tmp_path, monkeypatch, capsys)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: ckpt_path={path} cannot be read: ")
    assert re.search(SAYS[kind], lines[0]), lines[0]
    assert "give best.ckpt or last.ckpt" in lines[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_onnx_export_is_one_line(kind, good_files, tmp_path, monkeypatch, capsys):
    path = damaged(kind, good_files["onnx"], tmp_path / "files")
    shutil.copy(good_files["onnx"].with_name("model.onnx.json"), path.with_name(path.name + ".json"))  # its card is fine
    status, lines = run("predict", [f"ckpt_path={path}", f"inputs={good_files['image']}"], tmp_path, monkeypatch, capsys)
    assert status == 2 and len(lines) == 1, lines
    says = {"text": r"it is a text file, not an ONNX model", "empty": SAYS["empty"],
            "truncated": r"cannot be read as an ONNX model .*: is it truncated\? export it again"}[kind]
    assert lines[0].startswith(f"error: ckpt_path={path}") and re.search(says, lines[0]), lines[0]


def test_a_checkpoint_whose_weights_are_another_models_is_named(tmp_path):
    from tinyvision.inference import load_classifier

    mixed = write_checkpoint(tmp_path / "mixed.ckpt", net=classifier("ConvNet"), settings=classifier("LeNet"))
    with pytest.raises(ConfigError, match=r"ckpt_path=.*mixed.ckpt: the weights in this file do not fit the model its settings "
                                          r"describe \(LeNet, 1×28×28 images, 10 classes\) \((Missing key|Unexpected key|size "
                                          r"mismatch).*\); the file was edited or pieced together from two runs"):
        load_classifier(mixed)


def test_a_checkpoint_loads_without_fetching_the_weights_it_was_started_from(tmp_path, monkeypatch):
    """A model trained from downloaded weights (model.weights=DEFAULT) is loaded from its checkpoint: nothing is fetched,
    and its settings still name where its weights came from."""
    import torchvision

    from tinyvision.inference import load_classifier

    def no_download(*args, **kwargs):
        raise AssertionError("a checkpoint's weights were downloaded again")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    settings = ImageClassifier(model={"_target_": "tinyvision.models.TorchvisionModel", "name": "mobilenet_v3_small"},
                               data=dict(GREY), optimizer=SGD)
    settings.hparams.model["weights"] = "DEFAULT"  # as a run started from torchvision's weights saves it
    path = write_checkpoint(tmp_path / "transfer.ckpt", net=settings)
    loaded = load_classifier(path)
    assert loaded.hparams.model["weights"] == "DEFAULT"
    assert torch.equal(loaded.net.net.features[0][0].weight, settings.net.net.features[0][0].weight)


# ---------------------------------------------------------------------------------------------- weights files


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory) -> dict[str, Path]:
    import timm
    import torchvision
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    save_file(timm.create_model("mobilenetv3_small_050").state_dict(), str(folder / "timm.safetensors"))
    torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), folder / "timm.pth")
    torch.save(torchvision.models.get_model("mobilenet_v3_small").state_dict(), folder / "torchvision.pth")
    return {"timm.safetensors": folder / "timm.safetensors", "timm.pth": folder / "timm.pth",
            "torchvision.pth": folder / "torchvision.pth"}


def build(library: str, name: str, weights_path: Path):
    from tinyvision.models import TimmModel, TorchvisionModel

    model = TimmModel if library == "timm" else TorchvisionModel
    return model(name, in_channels=1, num_classes=10, image_size=28, weights_path=str(weights_path))


@pytest.mark.parametrize("file", ["timm.safetensors", "timm.pth", "torchvision.pth"])
@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_weights_file_is_one_line_naming_the_setting(file, kind, weights_files, tmp_path):
    path = damaged(kind, weights_files[file], tmp_path)
    library, name = file.split(".")[0], {"timm": "mobilenetv3_small_050", "torchvision": "mobilenet_v3_small"}[file.split(".")[0]]
    with pytest.raises(ConfigError) as refused:
        build(library, name, path)
    message = str(refused.value)
    assert message.startswith(f"model.weights_path={path} cannot be read: ") and re.search(SAYS[kind], message), message
    assert "\n" not in message and "saved from that architecture" in message


@pytest.mark.parametrize("library, name", [("timm", "resnet10t"), ("torchvision", "resnet18")])
def test_weights_of_another_architecture_are_named(library, name, weights_files):
    with pytest.raises(ConfigError, match=rf"model.weights_path=.*: the weights in this file do not fit {library}'s {name} "
                                          r"\(.*\); give the .* of a .*, or set model.name to the architecture"):
        build(library, name, weights_files[f"{library}.pth"])


def test_good_weights_files_still_load(weights_files):
    from safetensors.torch import load_file

    for file, path in weights_files.items():
        library = file.split(".")[0]
        net = build(library, {"timm": "mobilenetv3_small_050", "torchvision": "mobilenet_v3_small"}[library], path)
        saved = torch.load(path, weights_only=True) if path.suffix == ".pth" else load_file(str(path))
        last = list(saved)[-3]  # a layer past the grey first convolution and before the new head
        assert torch.equal(net.net.state_dict()[last], saved[last]), (file, last)


# ---------------------------------------------------------------------------------------------- predict's inputs


@pytest.mark.parametrize("kind", DAMAGE)
def test_an_unreadable_image_as_the_only_input_is_one_line(kind, good_files, tmp_path, monkeypatch, capsys):
    image = damaged(kind, good_files["image"], tmp_path / "photos")
    status, lines = run("predict", [f"ckpt_path={good_files['ckpt']}", f"inputs={image}"], tmp_path, monkeypatch, capsys)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: inputs={image}: ") and re.search(IMAGE_SAYS[kind], lines[0]), lines[0]


def test_a_folder_of_unreadable_images_is_one_line_listing_them(good_files, tmp_path, monkeypatch, capsys):
    for kind in DAMAGE:
        damaged(kind, good_files["image"], tmp_path / "photos")
    status, lines = run("predict", [f"ckpt_path={good_files['ckpt']}", f"inputs={tmp_path / 'photos'}"], tmp_path, monkeypatch,
                        capsys)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: inputs={tmp_path / 'photos'}: none of its 3 image files can be read (")


def test_readable_and_unreadable_images_give_rows_and_exit_status_1(good_files, tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    damaged("text", good_files["image"], photos)
    shutil.copy(good_files["image"], photos / "good.png")
    (tmp_path / "out").mkdir()
    status, _ = run("predict", [f"ckpt_path={good_files['ckpt']}", f"inputs={photos}", f"output={tmp_path / 'out'}"],
                    tmp_path, monkeypatch, capsys)
    assert status == 1
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]  # a folder gets predictions.json
    assert sorted("error" in row for row in rows) == [False, True]


# ---------------------------------------------------------------------------------------------- folders and addresses


def test_output_folders_are_checked_without_being_created(tmp_path):
    from tinyvision.boundaries import check_loggers, output_folder, sqlite_parent

    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    with pytest.raises(ConfigError, match=r"data.cache_dir=.*a_file/cache: .*a_file is a file, not a folder: choose a path of "
                                          r"folders, e.g. data.cache_dir=outputs/cache"):
        output_folder("data.cache_dir", blocker / "cache")
    with pytest.raises(ConfigError, match=r"logger.csv.save_dir=.*a_file: it is a file, not a folder"):
        check_loggers({"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(blocker)}})
    # A missing parent is no problem: MLflow creates it, Optuna's is created by tinyvision (SQLite cannot).
    deep = tmp_path / "new" / "deeper" / "mlflow.db"
    check_loggers({"mlflow": {"_target_": "lightning.pytorch.loggers.MLFlowLogger", "tracking_uri": f"sqlite:///{deep}",
                              "artifact_location": str(tmp_path / "new" / "artifacts")}})
    assert not (tmp_path / "new").exists()
    sqlite_parent("hparams_search.storage", f"sqlite:///{deep}", create=True)
    assert deep.parent.is_dir()


def test_an_address_that_does_not_answer_is_named_at_once(monkeypatch):
    """A closed local port refuses at once; the check makes one connection and no retry."""
    import socket

    from tinyvision.boundaries import answer_problem

    connections = []
    real = socket.socket.connect

    def connect(self, address):
        connections.append(address)
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    assert answer_problem("http://127.0.0.1:9/") == "127.0.0.1:9 does not answer (Connection refused)"
    assert connections == [("127.0.0.1", 9)]


def test_a_dataset_that_cannot_be_downloaded_here_is_named_without_trying(tmp_path, monkeypatch):
    """data.download=true on a machine without internet: one short connection per server, then the one line of how to get
    the files; torchvision's download, which waits on each file, is not started."""
    import torchvision

    from tinyvision import boundaries
    from tinyvision.data import sources
    from tinyvision.errors import DataError

    monkeypatch.setattr(boundaries, "_route", lambda *_: ("127.0.0.1", 9))

    def download(*args, **kwargs):
        raise AssertionError("torchvision's download started")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", download)
    with pytest.raises(DataError, match=r"mnist files not found: .* Downloading is impossible here: "
                                        r"ossci-datasets.s3.amazonaws.com:443 does not answer \(Connection refused\); "
                                        r"yann.lecun.com:80 does not answer \(Connection refused\). To get them: "):
        sources.fetch("mnist", tmp_path / "data", [], download=True)


@pytest.mark.parametrize(("section", "value", "message"), [
    ("optimizer", None, "optimizer=null: a section of key: value settings"),
    ("optimizer", [1, 2], "optimizer=[1,2]: a section of key: value settings"),
    ("scheduler", "cosine", "scheduler=cosine: a section of key: value settings"),
    ("data", {**GREY, "image_size": "big"}, "data={channels:1,image_size:big,"),
    ("data", {**GREY, "mean": [0.1, 0.2, 0.3]}, "mean and std need one value, or one per channel (1)"),
    ("model", {"_target_": "os.system"}, "_target_=os.system: Hydra refuses to call it"),
])
def test_a_checkpoints_settings_of_the_wrong_kind_are_one_line(section, value, message):
    """What a hand-edited or foreign checkpoint hands the classifier: one line naming the section (eval, predict and
    export word it as the checkpoint's), never a traceback, and never a call of a target Hydra's policy refuses."""
    settings = {"model": {"_target_": "tinyvision.models.LeNet"}, "data": dict(GREY), "optimizer": SGD, section: value}
    with pytest.raises(ConfigError) as refused:
        ImageClassifier(**settings)
    assert message in str(refused.value)
