"""Real Fashion-MNIST, from Debian's dataset-fashion-mnist package, when it is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyvision.training import train

pytestmark = pytest.mark.slow  # trains runs in subprocesses: make test-fast leaves these out

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="real Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist",
)
def test_convnet_reaches_80_percent_on_real_fashion_mnist_in_one_epoch(make_config, tmp_path):
    cfg = make_config(
        "model=convnet", "data=fashion", "data.download=false", "data.batch_size=128", "trainer=cpu",
        "trainer.max_epochs=1", "logger=none", data_dir=tmp_path / "data",
    )
    metrics = train(cfg)
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # from the mirror
    assert metrics["test/acc"] >= 0.80, metrics
