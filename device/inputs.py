"""Where the device's images come from: a dataset or image files, as (C, H, W) uint8."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from planner.datasets import DatasetRef, folder_classes, parse_dataset, read_image
from planner.datasets import dataset_images as split_images
from planner.registry import ModelSpec


class InputError(ValueError):
    """Images that cannot be fed to the model."""


def check_dataset(name: str) -> DatasetRef:
    """A `--dataset` spec parsed, and an image folder's test split listed, before any frame runs."""
    ref = parse_dataset(name)
    if ref.root is not None:
        folder_classes(ref.root, "test")
    return ref


def dataset_images(name: str, spec: ModelSpec, input_hw: tuple[int, int], limit: int | None,
                   offset: int = 0) -> Iterator[tuple[np.ndarray, int | None]]:
    """(image (C, H, W) uint8, label) from a dataset's test split, `fashion-mnist` or
    `imagefolder:DIR` (decoded to the model's channels and `input_hw`; planner.datasets)."""
    return split_images(check_dataset(name), "test", spec.in_channels, input_hw, limit, offset)


def file_images(paths: list[str], spec: ModelSpec, input_hw: tuple[int, int]
                ) -> Iterator[tuple[np.ndarray, None]]:
    """Image files, converted to the model's channels and resized to its input size."""
    for p in paths:
        yield read_image(p, spec.in_channels, input_hw), None


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
