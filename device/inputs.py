"""Where the device's images come from: a dataset or image files, as (C, H, W) uint8."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from planner.registry import ModelSpec

DATASETS = ("fashion-mnist",)


class InputError(ValueError):
    """Images that cannot be fed to the model."""


def dataset_images(name: str, spec: ModelSpec, input_hw: tuple[int, int], limit: int | None,
                   offset: int = 0) -> Iterator[tuple[np.ndarray, int | None]]:
    """(image (C, H, W) uint8, label) from a dataset's test split."""
    if name not in DATASETS:
        raise InputError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
    from planner.data import fashion_mnist_arrays
    images, labels = fashion_mnist_arrays("test")            # (N, 1, 28, 28) uint8, (N,)
    shape = tuple(images.shape[1:])
    if shape != (spec.in_channels, *input_hw):
        raise InputError(f"{name} images are {'x'.join(map(str, shape))}; model {spec.name} expects "
                         f"{spec.in_channels}x{input_hw[0]}x{input_hw[1]}")
    end = len(images) if limit is None else min(len(images), offset + limit)
    for i in range(offset, end):
        yield images[i], int(labels[i])


def file_images(paths: list[str], spec: ModelSpec, input_hw: tuple[int, int]
                ) -> Iterator[tuple[np.ndarray, None]]:
    """Image files, converted to the model's channels and resized to its input size."""
    from PIL import Image, UnidentifiedImageError
    mode = {1: "L", 3: "RGB"}[spec.in_channels]
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert(mode).resize((input_hw[1], input_hw[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"image {p!r}: cannot read it ({e})") from e
        yield (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy(), None


def dataset_stream(name: str, spec: ModelSpec, input_hw: tuple[int, int], loop: bool,
                   stop) -> Iterator[tuple[np.ndarray, int | None]]:
    """The dataset's test images in order, once or round and round until `stop` is set."""
    while not stop.is_set():
        for item in dataset_images(name, spec, input_hw, None):
            if stop.is_set():
                return
            yield item
        if not loop:
            return


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def watch_images(directory: str, spec: ModelSpec, input_hw: tuple[int, int], stop,
                 poll_s: float = 0.2) -> Iterator[tuple[np.ndarray, None]]:
    """Image files in `directory`, oldest first, then each new one as it appears."""
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"--watch {directory!r}: not a directory")
    seen: set[Path] = set()
    while not stop.is_set():
        new = sorted((p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p not in seen),
                     key=lambda p: (p.stat().st_mtime, p.name))
        for p in new:
            seen.add(p)
            yield from file_images([str(p)], spec, input_hw)
        if not new:
            stop.wait(poll_s)


def stdin_images(spec: ModelSpec, input_hw: tuple[int, int], stop) -> Iterator[tuple[np.ndarray, None]]:
    """Image paths read from standard input, one a line, until end of input or `stop`."""
    import sys
    for line in sys.stdin:
        if stop.is_set():
            return
        if line.strip():
            yield from file_images([line.strip()], spec, input_hw)
