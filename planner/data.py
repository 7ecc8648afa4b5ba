"""Fashion-MNIST, from Debian's `dataset-fashion-mnist` or torchvision's download.

Order of sources: the IDX .gz files under `root` (default /usr/share/datasets/fashion-mnist,
where Debian's package puts them), then a previous torchvision download in the cache
directory, then torchvision's download into that cache. When none works the loader raises
`DatasetUnavailable` with one line that says what to install. Never a synthetic stand-in.
"""
from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATASET_NAME = "fashion-mnist"
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "opt-coinfer"
NUM_CLASSES = 10
IMAGE_HW = (28, 28)

# split -> (images file, labels file, expected count); the IDX names of the original release
SPLITS: dict[str, tuple[str, str, int]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
_IDX_UBYTE = 0x08  # IDX type code for unsigned bytes

INSTALL_HINT = ("Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist` "
                f"(Debian, into {DEFAULT_ROOT}) or allow network access for torchvision's download "
                f"into {CACHE_DIR}")


class DatasetUnavailable(RuntimeError):
    """The dataset is neither installed nor downloadable; the message is one line."""


class DatasetFormatError(ValueError):
    """A dataset file that is not the IDX file it should be."""


def read_idx_gz(path: str | Path, ndim: int) -> np.ndarray:
    """Parse a gzip-compressed IDX file of unsigned bytes with `ndim` dimensions."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 + 4 * ndim:
        raise DatasetFormatError(f"expected an IDX file in {str(path)!r}, got {len(raw)} bytes")
    zero, dtype, nd = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype != _IDX_UBYTE or nd != ndim:
        raise DatasetFormatError(
            f"expected IDX magic 0x0000{_IDX_UBYTE:02x}{ndim:02x} in {str(path)!r}, "
            f"got 0x{int.from_bytes(raw[:4], 'big'):08x}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DatasetFormatError(
            f"expected {int(np.prod(dims))} data bytes for shape {dims} in {str(path)!r}, "
            f"got {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _load_idx_pair(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name, count = SPLITS[split]
    images = read_idx_gz(directory / images_name, 3)   # (N, 28, 28) uint8
    labels = read_idx_gz(directory / labels_name, 1)   # (N,) uint8
    if images.shape != (count, *IMAGE_HW) or labels.shape != (count,):
        raise DatasetFormatError(
            f"expected {count} images of {IMAGE_HW} and {count} labels for split {split!r} in "
            f"{str(directory)!r}, got images {images.shape} and labels {labels.shape}")
    return images[:, None].copy(), labels.astype(np.int64)    # (N, 1, 28, 28) uint8, (N,) int64


def _has_files(directory: Path, split: str) -> bool:
    images_name, labels_name, _ = SPLITS[split]
    return (directory / images_name).is_file() and (directory / labels_name).is_file()


def _torchvision_raw_dir(cache_dir: Path) -> Path:
    return cache_dir / "FashionMNIST" / "raw"  # where torchvision keeps the downloaded .gz


def fashion_mnist_arrays(split: str, root: str | Path | None = None, *,
                         download: bool = True, cache_dir: str | Path | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `split` ("train" or "test") as numpy ((N, 1, 28, 28) uint8, (N,) int64),
    without torch (the ONNX device reads it so).

    `root`: directory with the IDX .gz files (default: Debian's location). `download`:
    whether torchvision, when installed, may download into `cache_dir` (default
    ~/.cache/opt-coinfer) when the files are not under `root` or in the cache already.
    """
    if split not in SPLITS:
        raise ValueError(f"expected split 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else DEFAULT_ROOT
    cache = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    for directory in (root, _torchvision_raw_dir(cache)):
        if _has_files(directory, split):
            log.debug("Fashion-MNIST %s from %s", split, directory)
            return _load_idx_pair(directory, split)
    if download:
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(str(cache), train=(split == "train"), download=True)
        except Exception as e:  # noqa: BLE001 - no torchvision, network, disk and HTTP errors: "unavailable"
            log.debug("torchvision download of Fashion-MNIST failed: %s", e)
        if _has_files(_torchvision_raw_dir(cache), split):
            return _load_idx_pair(_torchvision_raw_dir(cache), split)
    raise DatasetUnavailable(INSTALL_HINT)


def load_fashion_mnist(split: str, root: str | Path | None = None, *,
                       download: bool = True, cache_dir: str | Path | None = None):
    """`fashion_mnist_arrays` as torch tensors ((N, 1, 28, 28) uint8, (N,) int64)."""
    import torch
    x, y = fashion_mnist_arrays(split, root, download=download, cache_dir=cache_dir)
    return torch.from_numpy(x), torch.from_numpy(y)
