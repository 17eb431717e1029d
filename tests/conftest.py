"""Small synthetic datasets written in the real on-disk formats, so the real readers run."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from tinyvision.noise import KNOWN_WARNINGS

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    # pytest resets warning filters for each test: the library warnings tinyvision silences, silenced here too.
    for message in KNOWN_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}")
    # make test runs the tests in several processes (pytest-xdist): each takes its share of the cores, for its own
    # runs and the commands it starts, instead of every process's torch spreading over all of them.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    # One SLURM cluster per machine (tools/slurm_cluster.sh has fixed ports and a fixed folder): under pytest-xdist
    # (make test, --dist loadgroup) every test that uses it runs in the same worker. First: xdist's own hook turns the
    # marker into the group, and a marker added after it is ignored (every worker then restarted the cluster under
    # the others' running jobs: sbatch's "Unable to contact slurm controller").
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm_cluster"))


def pytest_collection_finish(session) -> None:
    if not getattr(session.config.option, "loadgroup", False):
        return  # not a pytest-xdist worker under --dist loadgroup
    apart = [item.nodeid for item in session.items
             if "slurm_cluster" in getattr(item, "fixturenames", ()) and not item.nodeid.endswith("@slurm_cluster")]
    if apart:
        raise pytest.UsageError(f"{apart[0]}: the SLURM tests must share one pytest-xdist worker and xdist_group did not "
                                "apply (pytest 9.2 ignores the group pytest-xdist 3.8 sets: requirements.lock pins 9.1)")


CONF = ROOT / "conf"
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def filling_disk(room: int) -> type:
    """A raw file whose disk has ``room`` bytes left, as a full tmpfs behaves: a write stops short at the limit, the
    next one fails with ENOSPC."""
    import errno
    import io

    class FillsUp(io.FileIO):
        def write(self, data):
            left = max(0, room - self.tell())
            if not left:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(bytes(data)[:left])

    return FillsUp


def full_disk(monkeypatch, room: int) -> None:
    """Every file opened for writing under a ``.partial`` name (each tinyvision writer's temporary file) meets a disk
    with ``room`` bytes left; builtins.open and io.open (pathlib's) both."""
    import builtins
    import io

    real_open, disk = builtins.open, filling_disk(room)

    def full_disk_open(file, mode="r", *args, **kwargs):
        if str(file).endswith(".partial") and "w" in mode:
            raw = disk(file, "w")
            return io.BufferedWriter(raw) if "b" in mode else io.TextIOWrapper(io.BufferedWriter(raw), newline=kwargs.get("newline"))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk_open)
    monkeypatch.setattr(io, "open", full_disk_open)


def class_images(labels: np.ndarray, size: int, channels: int, seed: int) -> np.ndarray:
    """uint8 N×C×H×W images whose class is a bright square at a class-specific place: easy to learn."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), channels, size, size)).astype(np.uint8)
    cell = size // 4
    for i, label in enumerate(labels):
        row, col = divmod(int(label) % 16, 4)
        images[i, :, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = 220
    return images


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """MNIST's idx3-ubyte: magic 0x00000803, then big-endian N, H, W, then the pixels."""
    n, height, width = images.shape
    path.write_bytes(struct.pack(">IIII", 0x0803, n, height, width) + images.tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """MNIST's idx1-ubyte: magic 0x00000801, then big-endian N, then one byte per label."""
    path.write_bytes(struct.pack(">II", 0x0801, len(labels)) + labels.astype(np.uint8).tobytes())


def write_idx_dataset(raw: Path, sizes=(400, 100), seed: int = 0, gz: bool = False) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for (image_name, label_name), count in zip(IDX_NAMES.values(), sizes):
        labels = rng.integers(0, 10, size=count)
        images = class_images(labels, 28, 1, seed + count)[:, 0]
        write_idx_images(raw / image_name, images)
        write_idx_labels(raw / label_name, labels)
        if gz:
            for name in (image_name, label_name):
                (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
                (raw / name).unlink()


def write_cifar10(folder: Path, per_batch: int = 60, test: int = 100, seed: int = 1) -> None:
    """CIFAR-10's python format: pickled dicts with 'data' (N×3072 uint8, RGB planes) and 'labels'."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, size=count)
        data = class_images(labels, 32, 3, int(rng.integers(1 << 30))).reshape(count, 3072)
        with open(folder / name, "wb") as handle:
            pickle.dump({"batch_label": name, "data": data, "labels": labels.tolist()}, handle)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle)


def write_image_folder(root: Path, classes=("ants", "bees"), per_class: int = 24, seed: int = 2) -> None:
    """One subfolder of PNG images per class, of mixed sizes, as seed 003's ants/bees."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = int(rng.integers(36, 60))
            pixels = class_images(np.array([index * 5]), size, 3, int(rng.integers(1 << 30)))[0]
            Image.fromarray(pixels.transpose(1, 2, 0)).save(root / name / f"{i:03d}.png")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root / "MNIST" / "raw", seed=0)
    write_idx_dataset(root / "FashionMNIST" / "raw", seed=10)
    write_cifar10(root / "cifar-10-batches-py")
    write_image_folder(root / "ants_bees")
    return root


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A data dir whose 'mnist' is the ten synthetic stroke shapes."""
    root = tmp_path_factory.mktemp("shapes")
    write_shape_digits(root / "MNIST" / "raw")
    return root


@pytest.fixture
def make_config(data_root, tmp_path):
    """Compose conf/train.yaml as train.py would, pointed at the synthetic data and a fresh run dir."""

    def make(*overrides: str, run_dir: Path | None = None, data_dir: Path | None = None):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                config_name="train",
                overrides=[
                    f"paths.data_dir={data_dir or data_root}",
                    f"paths.output_dir={run_dir or tmp_path / 'run'}",
                    "callbacks=minimal",
                    *overrides,
                ],
            )

    return make


def draw_shape(label: int, canvas: tuple[int, int], box: tuple[int, int, int, int], ink: int, background: int,
               width: int) -> Image.Image:
    """A grey image with one of ten distinct stroke shapes (our stand-in for the ten digits) in ``box``."""
    from PIL import ImageDraw

    image = Image.new("L", canvas, background)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    mid_x, mid_y = (left + right) // 2, (top + bottom) // 2
    shapes = {
        0: lambda: draw.ellipse(box, outline=ink, width=width),
        1: lambda: draw.line([(mid_x, top), (mid_x, bottom)], fill=ink, width=width),
        2: lambda: draw.line([(left, mid_y), (right, mid_y)], fill=ink, width=width),
        3: lambda: (draw.line([(left, top), (right, bottom)], fill=ink, width=width),
                    draw.line([(left, bottom), (right, top)], fill=ink, width=width)),
        4: lambda: (draw.line([(mid_x, top), (mid_x, bottom)], fill=ink, width=width),
                    draw.line([(left, mid_y), (right, mid_y)], fill=ink, width=width)),
        5: lambda: draw.rectangle(box, outline=ink, width=width),
        6: lambda: draw.polygon([(mid_x, top), (right, bottom), (left, bottom)], outline=ink, width=width),
        7: lambda: draw.line([(left, top), (left, bottom), (right, bottom)], fill=ink, width=width, joint="curve"),
        8: lambda: (draw.ellipse((left, top, right, mid_y), outline=ink, width=width),
                    draw.ellipse((left, mid_y, right, bottom), outline=ink, width=width)),
        9: lambda: draw.line([(left, bottom), (right, top)], fill=ink, width=width),
    }
    shapes[label]()
    return image


def write_shape_digits(raw: Path, sizes=(1200, 300), seed: int = 3) -> None:
    """An MNIST-format set of the ten shapes, made as MNIST's digits were: white strokes drawn large
    with varied size and width, cropped, scaled into a 20×20 box and centred by centre of mass in 28×28."""
    from tinyvision.data.photos import centred_like_mnist

    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for (image_name, label_name), count in zip(IDX_NAMES.values(), sizes):
        labels = rng.integers(0, 10, size=count)
        images = []
        for label in labels:
            width, height = (int(v) for v in rng.integers(36, 60, size=2))
            left, top = (int(v) for v in rng.integers(2, 10, size=2))
            image = draw_shape(int(label), (72, 72), (left, top, left + width, top + height), 255, 0, int(rng.integers(3, 7)))
            images.append(centred_like_mnist(image, (28, 28), box=0.72, by_mass=True))
        write_idx_images(raw / image_name, np.stack(images))
        write_idx_labels(raw / label_name, labels)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node SLURM cluster on this machine (tools/slurm_cluster.sh), its SLURM_CONF set for the tests' commands.
    Skipped where SLURM's packages are missing, except in CI (CI=true), where it must run."""
    import shutil
    import subprocess

    if not all(shutil.which(program) for program in ("munged", "slurmctld", "slurmd", "sbatch")):
        if os.environ.get("CI"):
            pytest.fail("CI runs the SLURM tests: install slurm-wlm and munge (make cluster)")
        pytest.skip("no SLURM here: apt-get install slurm-wlm munge (make cluster)")
    started = subprocess.run([str(ROOT / "tools" / "slurm_cluster.sh"), "start"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    conf = started.stdout.strip().rpartition("SLURM_CONF=")[2]
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    subprocess.run([str(ROOT / "tools" / "slurm_cluster.sh"), "stop"], capture_output=True, timeout=120)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server of this machine's packages, started for the test session in a folder of its own (trust
    authentication, localhost only), with an empty database: its SQLAlchemy URL. Skipped where the server or psycopg is
    missing, except in CI, where it must run (make cluster installs the server, make setup psycopg)."""
    import glob
    import importlib.util
    import shutil
    import socket
    import subprocess
    import tempfile

    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if initdb is None or importlib.util.find_spec("psycopg") is None:
        if os.environ.get("CI"):
            pytest.fail("CI runs the PostgreSQL tests: install postgresql (make cluster) and psycopg (make setup)")
        pytest.skip("no PostgreSQL server or psycopg here: apt-get install postgresql (make cluster), make setup")
    bindir = Path(initdb).resolve().parent
    folder = Path(tempfile.mkdtemp(prefix="tinyvision-postgres-"))  # under /tmp: the server's user must reach it
    as_server_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: as the postgres user Debian's package creates
        as_server_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def run(*command) -> None:
        done = subprocess.run([*as_server_user, *map(str, command)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command[0]}: {done.stdout[-1500:]}{done.stderr[-1500:]}"

    data = folder / "data"
    run(bindir / "initdb", "-D", data, "--auth=trust", "-U", "postgres", "--no-sync")
    run(bindir / "pg_ctl", "-D", data, "-w", "-l", folder / "server.log", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "studies")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/studies"
    finally:
        subprocess.run([*as_server_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
