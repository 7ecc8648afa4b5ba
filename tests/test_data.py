"""Fashion-MNIST loader: real IDX parsing and the one-line message when it is missing."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from planner import data
from planner.data import DatasetFormatError, DatasetUnavailable, load_fashion_mnist


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, data._IDX_UBYTE, array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_missing_dataset_gives_one_line_saying_what_to_install(tmp_path):
    with pytest.raises(DatasetUnavailable) as e:
        load_fashion_mnist("test", root=tmp_path, download=False, cache_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "torchvision" in msg


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected split 'train' or 'test'"):
        load_fashion_mnist("valid", root=tmp_path, download=False, cache_dir=tmp_path)


def test_idx_files_under_root_are_parsed_exactly(tmp_path, monkeypatch):
    monkeypatch.setitem(data.SPLITS, "test", (*data.SPLITS["test"][:2], 3))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = np.array([9, 0, 4], dtype=np.uint8)
    _write_idx(tmp_path / data.SPLITS["test"][0], images)
    _write_idx(tmp_path / data.SPLITS["test"][1], labels)
    x, y = load_fashion_mnist("test", root=tmp_path, download=False, cache_dir=tmp_path)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.tolist() == [9, 0, 4]
    assert torch.equal(x[:, 0], torch.from_numpy(images))


def test_wrong_magic_is_a_format_error(tmp_path):
    _write_idx(tmp_path / "x.gz", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(DatasetFormatError, match="expected IDX magic"):
        data.read_idx_gz(tmp_path / "x.gz", 3)


@pytest.mark.skipif(not (data.DEFAULT_ROOT / data.SPLITS["test"][0]).is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_installed_test_split_is_fashion_mnist():
    x, y = load_fashion_mnist("test", download=False)
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(y.bincount(), torch.full((10,), 1000))
