"""Where the device's images come from: a dataset or image files, as (C, H, W) uint8."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from planner.models import ModelSpec

DATASETS = ("fashion-mnist",)


class InputError(ValueError):
    """Images that cannot be fed to the model."""


def dataset_images(name: str, spec: ModelSpec, input_hw: tuple[int, int], limit: int | None,
                   offset: int = 0) -> Iterator[tuple[np.ndarray, int | None]]:
    """(image (C, H, W) uint8, label) from a dataset's test split."""
    if name not in DATASETS:
        raise InputError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
    from planner.data import load_fashion_mnist
    images, labels = load_fashion_mnist("test")              # (N, 1, 28, 28) uint8, (N,)
    shape = tuple(images.shape[1:])
    if shape != (spec.in_channels, *input_hw):
        raise InputError(f"{name} images are {'x'.join(map(str, shape))}; model {spec.name} expects "
                         f"{spec.in_channels}x{input_hw[0]}x{input_hw[1]}")
    end = len(images) if limit is None else min(len(images), offset + limit)
    for i in range(offset, end):
        yield images[i].numpy(), int(labels[i])


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
