"""logger=wandb: a Weights & Biases run written offline inside the run folder, read back from wandb's own record
file, with no connection made; a resumed run logs on into the same W&B run; bad settings and a missing package
are one line each."""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tinyvision.errors import ConfigError
from tinyvision.hparams import compared_hparams
from tinyvision.training import train

wandb = pytest.importorskip("wandb")  # make test installs it (the dev extra); a package user may not have it

ONE_EPOCH = ["logger=wandb", "trainer.max_epochs=1", "data.batch_size=64", "data.val_size=100", "trainer.limit_train_batches=3"]


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Every way W&B could reach a server leads to a local listener that counts connections: its server address
    (WANDB_BASE_URL) and the HTTP(S) proxies, which Python's requests and wandb-core's Go client both use. Its
    settings and caches go to tmp_path, not the home folder. The test asserts the count is 0."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    address = f"http://127.0.0.1:{listener.getsockname()[1]}"
    connections = []

    def count():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed at the end of the test
                return
            connections.append(connection.recv(200))
            connection.close()

    threading.Thread(target=count, daemon=True).start()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, address)
    for name in ("NO_PROXY", "no_proxy", "WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", address)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    yield connections
    # wandb's service process outlives a run and keeps the environment it started with: the next test starts its own
    wandb.teardown()
    listener.close()


def wandb_records(run_folder: Path):
    """The protobuf records of an offline run's run-<id>.wandb file. wandb 0.31 has no reader of its own for it
    (and writes no files/config.yaml nor wandb-summary.json offline): the file is a LevelDB-style log, a 7-byte
    header (":W&B", magic 0xBEE1, version) then 32 KiB blocks of chunks, each with a 7-byte header (CRC, length,
    type: 1 whole, 2 first, 3 middle, 4 last), each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    [path] = run_folder.glob("run-*.wandb")
    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), "not a W&B record file: has wandb changed its format?"
    position, block, chunks = 7, 32768, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            break
        chunks += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def read_run(run_folder: Path) -> dict:
    """What a W&B offline run holds: its id, name and project, config, history rows, final summary and exit code.

    wandb's service process writes the file and flushes it when it closes the run's stream, which it may do after
    run.finish() has returned (CI once read a file of the header alone, under load): shutting the service down
    first waits for that. The next run of the test starts a new service."""
    wandb.teardown()
    key = lambda item: item.key or "/".join(item.nested_key)
    run = {"config": {}, "history": [], "summary": {}, "exit_code": None}
    for record in wandb_records(run_folder):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, name=record.run.display_name, project=record.run.project,
                       tags=list(record.run.tags))
            run["config"].update({key(item): json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            run["config"].update({key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            run["history"].append({key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            run["summary"].update({key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    run["config"].pop("_wandb", None)
    assert "id" in run, f"{run_folder} holds no run record: {[item.name for item in run_folder.iterdir()]}, {run}"
    return run


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_a_wandb_run_is_written_offline_in_the_run_folder_with_the_curated_hparams_and_metrics(make_config, tmp_path,
                                                                                               no_network):
    run_dir = tmp_path / "run"
    cfg = make_config(*ONE_EPOCH, "logger.wandb.tags=[baseline]", run_dir=run_dir)
    metrics = train(cfg)

    [folder] = offline_runs(run_dir)  # offline by default, inside the run folder
    run = read_run(folder)
    assert run["name"] == "run" and run["project"] == "tinyvision" and run["tags"] == ["baseline"]
    assert folder.name.endswith(f"-{run['id']}") and run["exit_code"] == 0  # ended: ready for wandb sync
    # the curated hyperparameters, as every logger gets them, and nothing else of the config
    expected = compared_hparams(OmegaConf.to_container(cfg, resolve=True), {})
    assert run["config"] == pytest.approx(expected)
    assert run["config"]["optimizer/lr"] == 0.001 and run["config"]["model"] == "LeNet" and "seed" in run["config"]
    # TensorBoard's metrics: per epoch, per step, the final test and its report
    epochs = [row for row in run["history"] if "val/acc" in row]
    assert [row["val/acc"] for row in epochs] == pytest.approx([row["val/acc"] for row in metrics["history"]])
    assert any("train/loss" in row for row in run["history"])
    for name in ("test/acc", "test/loss", "val/acc_best", "test/f1_macro"):
        assert run["summary"][name] == pytest.approx(metrics[name]), name
    assert run["summary"]["run/epochs"] == 1
    assert no_network == []


def test_a_resumed_run_logs_on_into_the_same_wandb_run(make_config, tmp_path, no_network):
    run_dir = tmp_path / "run"
    train(make_config(*ONE_EPOCH, run_dir=run_dir))
    metrics = train(make_config(*ONE_EPOCH, f"resume={run_dir}", "trainer.max_epochs=2", run_dir=run_dir))

    first, second = (read_run(folder) for folder in offline_runs(run_dir))  # wandb sync uploads both into one run
    assert second["id"] == first["id"] and second["name"] == "run" and second["exit_code"] == 0
    assert [row["epoch"] for row in second["history"] if "val/acc" in row] == [1]  # only the epoch after the checkpoint
    assert second["config"]["trainer/max_epochs"] == 2  # the resumed part's own settings
    assert second["summary"]["test/acc"] == pytest.approx(metrics["test/acc"])
    assert no_network == []


def test_a_wandb_run_left_open_in_the_process_is_ended_not_reused(make_config, tmp_path, no_network):
    # Lightning would log into any W&B run still open (a sweep's earlier job that ended by an exception)
    stale = wandb.init(mode="offline", dir=str(tmp_path), project="other", name="stale")
    run_dir = tmp_path / "run"
    train(make_config(*ONE_EPOCH, run_dir=run_dir))

    [left_open] = (read_run(folder) for folder in (tmp_path / "wandb").glob("offline-run-*"))
    [folder] = offline_runs(run_dir)
    assert left_open["id"] == stale.id and left_open["exit_code"] == 1 and not left_open["history"]
    assert read_run(folder)["name"] == "run" and read_run(folder)["id"] != stale.id


@pytest.mark.parametrize(("folder", "name"), [("run", "run"), ("sweep/3", "sweep/3")])
def test_a_wandb_run_is_named_after_its_run_or_its_sweep_and_job(folder, name, make_config, tmp_path):
    from tinyvision.config import validate_train
    from tinyvision.training import _loggers

    [logger] = _loggers(validate_train(make_config("logger=wandb", run_dir=tmp_path / folder), look_outside=False), None)
    assert logger._wandb_init["name"] == name and logger._wandb_init["dir"] == str(tmp_path / folder)
    assert logger._wandb_init["mode"] == "offline"  # no run started: Lightning starts it when it first logs


@pytest.mark.parametrize(("offline", "environment", "mode"), [
    (None, None, "offline"), (None, "online", None), (True, "online", "offline"), (False, None, "online"),
])
def test_wandb_runs_offline_unless_asked(offline, environment, mode, monkeypatch):
    from tinyvision.loggers import WandbLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    if environment:
        monkeypatch.setenv("WANDB_MODE", environment)
    logger = WandbLogger(offline=offline, save_dir="unused")
    assert logger._wandb_init.get("mode") == mode  # None: wandb reads WANDB_MODE itself


def test_logger_wandb_without_the_package_names_the_extra(make_config, monkeypatch):
    from tinyvision.config import validate_train

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(ConfigError) as refused:
        validate_train(make_config("logger=[tensorboard,wandb]"))
    assert str(refused.value) == ("logger=wandb: needs the wandb package, not installed here: pip install 'tinyvision[wandb]' "
                                  "(or choose another logger, e.g. logger=tensorboard)")
