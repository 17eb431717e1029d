"""Where a user's path meets the file system: nothing written is lost or overwritten, and a refused write is one
line that leaves no partial file behind."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from tinyvision.errors import ConfigError, WriteFailed
from tinyvision.export import export
from tinyvision.files import card_path, output_file, replacing
from tinyvision.module import ImageClassifier

GREY = {"channels": 1, "image_size": 28, "num_classes": 10, "mean": [0.2860], "std": [0.3530], "dataset": "fashion"}


def lenet() -> ImageClassifier:
    return ImageClassifier(model={"_target_": "tinyvision.models.LeNet"}, data=GREY,
                           optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})


def test_an_export_never_writes_its_weights_under_its_cards_name(tmp_path):
    with pytest.raises(ConfigError, match=r"output=.*model.json: a safetensors export ends in .safetensors, "
                                          r"e.g. output=.*model.safetensors"):
        export(lenet(), "safetensors", tmp_path / "model.json")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial file


def test_two_formats_of_one_name_keep_their_own_cards(tmp_path):
    classifier = lenet()
    onnx_file, onnx_card = export(classifier, "onnx", tmp_path / "model.onnx")
    weights, weights_card = export(classifier, "safetensors", tmp_path / "model.safetensors")
    assert onnx_card != weights_card and onnx_card == card_path(onnx_file)
    assert json.loads(onnx_card.read_text())["format"] == "onnx"
    assert json.loads(weights_card.read_text())["format"] == "safetensors"


def test_output_file_takes_a_folder_and_names_a_file_in_the_way(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    assert output_file("output", folder, "model.onnx", ".onnx") == folder / "model.onnx"
    assert output_file("output", tmp_path / "new" / "deeper" / "m.onnx", "model.onnx", ".onnx") == tmp_path / "new" / "deeper" / "m.onnx"
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"a_file is a file, not a folder"):
        output_file("output", blocker / "model.onnx", "model.onnx", ".onnx")
    with pytest.raises(ConfigError, match=r"output=.*model.pt: this file must end in .onnx"):
        output_file("output", folder / "model.pt", "model.onnx", ".onnx")


def test_a_card_that_is_not_json_is_one_line(tmp_path):
    from tinyvision.inference import OnnxClassifier

    onnx_file, card = export(lenet(), "onnx", tmp_path / "model.onnx")
    for text in ("not json at all", "", "[1, 2]"):
        card.write_text(text)
        with pytest.raises(ConfigError, match=r"its card .* is not an export card .*: export the model again"):
            OnnxClassifier(onnx_file)


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "free some space"), (errno.EACCES, "choose a folder you can write to")])
def test_a_refused_write_removes_the_partial_file_and_keeps_the_previous_one(tmp_path, code, hint):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(WriteFailed, match=rf"cannot write .*last.ckpt: .* \(the previous file is kept\): {hint}"):
        with replacing(target, hidden=True) as partial:
            partial.write_bytes(b"half of a new one")
            raise OSError(code, "injected")
    assert target.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_short_write_inside_torch_save_is_a_refused_write_not_a_traceback(tmp_path, monkeypatch):
    """On a full disk the file's write stops short and torch's zip writer raises its own RuntimeError
    ("enforce fail at inline_container.cc ... unexpected pos"), not an OSError: it ends in the same one line."""
    import io

    import tinyvision.checkpoints as checkpoints
    from conftest import filling_disk
    from tinyvision.checkpoints import AtomicCheckpointIO

    FillsUp = filling_disk(1000)  # noqa: N806  (a class)
    monkeypatch.setattr(checkpoints, "open", lambda path, mode: io.BufferedWriter(FillsUp(path, mode)), raising=False)
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(WriteFailed, match=r"cannot write .*last.ckpt: .*\(the previous file is kept\)"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(10_000)}}, target)
    assert target.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_full_disk_during_a_checkpoint_ends_the_run_in_one_line_and_keeps_the_last_checkpoint(make_config, tmp_path,
                                                                                                 monkeypatch):
    """ENOSPC at the third checkpoint write of a run: WriteFailed (the script's one line, exit 2), no .partial left,
    and last.ckpt still the one written before."""
    from tinyvision.training import train

    real_save, writes = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            writes["n"] += 1
            if writes["n"] == 3:
                f.write(b"half")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run_dir = tmp_path / "run"
    with pytest.raises(WriteFailed, match=r"No space left on device \(the previous file is kept\): free some space"):
        train(make_config("data=mnist", "data.val_size=50", "trainer.max_epochs=2",
                          "callbacks.last_checkpoint.every_n_train_steps=2", run_dir=run_dir))
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert not [name for name in files if name.endswith(".partial")], files
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4  # written at steps 2 and 4; the third write (step 6) failed


def test_a_legal_name_whose_partial_sibling_would_be_too_long_is_still_written(tmp_path):
    from tinyvision.files import replacing

    path = tmp_path / ("z" * 250 + ".json")  # 255 bytes: legal; "<name>.partial" would be 263
    with replacing(path) as partial:
        assert len(partial.name) < 255
        partial.write_text("{}")
    assert path.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == [path.name]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    return figure


REPORT = {"per_class": {"a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3}},
          "macro": {"precision": 1.0, "recall": 1.0, "f1": 1.0}, "weighted": {"precision": 1.0, "recall": 1.0, "f1": 1.0}}
SWEEP_ROW = {"job": "0", "status": "done", "overrides": "seed=1", "val/acc_best": 0.9, "test/acc": 0.8, "epochs": 1,
             "wall_seconds": 1.0, "run_dir": "0"}


@pytest.mark.parametrize("writer", ["picture", "per_class.csv", "sweep summary", "json"])
def test_every_writer_of_a_run_s_files_meets_a_full_disk_with_one_line_and_no_partial(writer, tmp_path, monkeypatch):
    """The kind, not the case: each writer (pictures, CSV, the sweep's summary files, JSON) goes through replacing(),
    so a disk that fills up mid-write is the one WriteFailed line, nothing half-written is left and an earlier file
    stays whole. (Pictures and CSV files were written in place: a traceback and a half file.)"""
    from conftest import full_disk
    from tinyvision.files import save_figure, write_json
    from tinyvision.report import write_per_class_csv
    from tinyvision.sweep import write_summary

    write, target = {
        "picture": (lambda: save_figure(_figure(), tmp_path / "results.png"), "results.png"),
        "per_class.csv": (lambda: write_per_class_csv(tmp_path / "per_class.csv", REPORT), "per_class.csv"),
        "sweep summary": (lambda: write_summary(tmp_path, [SWEEP_ROW]), "summary.csv"),
        "json": (lambda: write_json(tmp_path / "metrics.json", {"test/acc": 0.5}), "metrics.json"),
    }[writer]
    (tmp_path / target).write_text("the earlier file")
    full_disk(monkeypatch, room=10)
    with pytest.raises(WriteFailed, match=r"cannot write .*: No space left on device \(the previous file is kept\)"):
        write()
    monkeypatch.undo()
    assert (tmp_path / target).read_text() == "the earlier file"
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".partial")]
