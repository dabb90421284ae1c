"""Dataset loaders on real data: the demo's (in the library) and the benchmark harness's."""

import gzip
import struct

import numpy as np
import pytest

from pdprune.demo.data import (
    FashionMNISTNotFound,
    find_fashion_mnist,
    load_digits,
    load_fashion_mnist,
    read_idx,
)


def test_digits_split_is_fixed_and_standardised():
    first, second = load_digits(), load_digits()
    assert first.x_train.shape == (1437, 1, 8, 8) and first.x_test.shape == (360, 1, 8, 8)
    assert (first.x_train == second.x_train).all()
    assert abs(float(first.x_train.mean())) < 1e-4 and abs(float(first.x_train.std()) - 1) < 1e-3
    assert set(first.y_test.tolist()) == set(range(10))


def test_read_idx_round_trip_and_truncation(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">III", 2, 3, 4)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(header + images.tobytes()))
    assert (read_idx(path) == images).all()
    path.write_bytes(gzip.compress(header + images.tobytes()[:-1]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def _fashion_mnist_installed() -> bool:
    try:
        find_fashion_mnist()
    except FashionMNISTNotFound:
        return False
    return True


@pytest.mark.skipif(
    not _fashion_mnist_installed(), reason="install with: apt-get install dataset-fashion-mnist"
)
def test_fashion_mnist_loads_the_official_split():
    data = load_fashion_mnist()
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(data.y_train.numpy()).tolist() == [6000] * 10
    assert abs(float(data.x_train.mean())) < 0.01


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path, monkeypatch):
    from benchmarks.harness.data import load_dataset
    from pdprune.demo import data

    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    with pytest.raises(FashionMNISTNotFound, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
