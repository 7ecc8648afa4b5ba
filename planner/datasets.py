"""Which images a command runs on: `fashion-mnist` or `imagefolder:DIR` (docs/CONTRACTS.md).

Torch-free (Pillow and numpy), so that the ONNX device reads image folders with the very
code the planner trains and evaluates with: one decoder, identical arrays on both ends
(torchvision's own decoders, deprecated since 0.29, give the same pixels: tests/test_imagefolder.py).

An image folder is torchvision's ImageFolder layout, DIR/train/CLASS/* and DIR/test/CLASS/*,
read as ImageFolder reads it: classes are the sorted sub-directory names (label = position),
samples are sorted by class, then by path under the class directory, and only files with
torchvision's image extensions count. Each image is decoded with Pillow (what ImageFolder's
default loader uses), converted to the model's channels (grayscale is replicated to RGB, RGB
becomes luma `L = R*299/1000 + G*587/1000 + B*114/1000` for a 1-channel model) and resized
bilinearly to the model's input size when it differs. The result is what the built-in loader
gives: (N, C, H, W) uint8 images and (N,) int64 labels; the model's `preprocess` normalises.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

FASHION_MNIST = "fashion-mnist"
IMAGEFOLDER = "imagefolder:"          # prefix of `imagefolder:DIR`
SPLITS = ("train", "test")
# torchvision.datasets.folder.IMG_EXTENSIONS, lower case
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset that cannot be read as asked; the message names the spec, directory or file."""


class UnknownDatasetError(DatasetError):
    """A `--dataset` spec that is neither `fashion-mnist` nor `imagefolder:DIR`."""


class MissingSplitError(DatasetError):
    """DIR/train or DIR/test is missing, or holds no class directory."""


class EmptyClassError(DatasetError):
    """A class directory without a single image file."""


class ClassMismatchError(DatasetError):
    """DIR/train and DIR/test name different classes."""


class UnreadableImageError(DatasetError):
    """An image file that Pillow cannot decode (corrupt, truncated, not an image)."""


class ImageShapeError(DatasetError):
    """Built-in images of another size or channel count than the model takes."""


@dataclass(frozen=True)
class DatasetRef:
    """A parsed `--dataset` spec."""

    name: str                 # what accuracy rows and banks record: `fashion-mnist` or `imagefolder:/abs/DIR`
    root: Path | None = None  # the image folder; None for the built-in Fashion-MNIST

    @property
    def is_folder(self) -> bool:
        return self.root is not None


def parse_dataset(spec: str) -> DatasetRef:
    """`fashion-mnist` or `imagefolder:DIR` -> DatasetRef (DIR made absolute, not yet read)."""
    if spec == FASHION_MNIST:
        return DatasetRef(FASHION_MNIST)
    if spec.startswith(IMAGEFOLDER) and spec[len(IMAGEFOLDER):].strip():
        root = Path(spec[len(IMAGEFOLDER):]).expanduser().resolve()
        return DatasetRef(f"{IMAGEFOLDER}{root}", root)
    raise UnknownDatasetError(f"dataset: expected {FASHION_MNIST!r} or 'imagefolder:DIR', got {spec!r}")


def _class_dirs(root: Path, split: str) -> list[str]:
    directory = root / split
    if not directory.is_dir():
        raise MissingSplitError(f"image folder {str(root)!r}: expected a {split!r} directory "
                                f"({split}/CLASS/*.png|jpg), got none at {str(directory)!r}")
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise MissingSplitError(f"image folder {str(root)!r}: expected class directories in "
                                f"{str(directory)!r}, got none")
    return classes


def folder_classes(root: str | Path, split: str) -> list[str]:
    """The sorted class names of `split`; the other split, when present, must name the same."""
    if split not in SPLITS:
        raise ValueError(f"expected split 'train' or 'test', got {split!r}")
    root = Path(root)
    classes = _class_dirs(root, split)
    other = SPLITS[1 - SPLITS.index(split)]
    if (root / other).is_dir():
        theirs = _class_dirs(root, other)
        if theirs != classes:
            only_here = sorted(set(classes) - set(theirs))
            only_there = sorted(set(theirs) - set(classes))
            raise ClassMismatchError(
                f"image folder {str(root)!r}: expected the same classes in train and test, got "
                f"{split} only: {only_here or '-'}; {other} only: {only_there or '-'}")
    return classes


def folder_samples(root: str | Path, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, [(path, label)]) of `split` in ImageFolder's order (class, then path)."""
    root = Path(root)
    classes = folder_classes(root, split)
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = []
        for dirpath, _, fnames in sorted(os.walk(root / split / name, followlinks=True)):
            found += [Path(dirpath) / f for f in sorted(fnames) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise EmptyClassError(f"image folder {str(root)!r}: expected images ({', '.join(IMAGE_EXTENSIONS)}) "
                                  f"in class directory {str(root / split / name)!r}, got none")
        samples += [(p, label) for p in found]
    return classes, samples


def read_image(path: str | Path, channels: int, input_hw: tuple[int, int]) -> np.ndarray:
    """One image file -> (channels, H, W) uint8 at `input_hw`, as the module docstring says."""
    from PIL import Image, UnidentifiedImageError
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"expected 1 or 3 image channels, got {channels}")
    try:
        with Image.open(path) as im:
            im = im.convert(mode)                       # decodes; a truncated file fails here
            if im.size != (input_hw[1], input_hw[0]):
                im = im.resize((input_hw[1], input_hw[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)        # (H, W) or (H, W, 3)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:  # Pillow's decoders raise these
        raise UnreadableImageError(f"image {str(path)!r}: cannot decode it ({e})") from e
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy()   # (C, H, W), writable


def folder_images(root: str | Path, split: str, channels: int, input_hw: tuple[int, int],
                  limit: int | None = None, offset: int = 0) -> Iterator[tuple[np.ndarray, int]]:
    """(image (C, H, W) uint8, label) of `split`, in order, decoded one at a time."""
    _, samples = folder_samples(root, split)
    end = len(samples) if limit is None else min(len(samples), offset + limit)
    for path, label in samples[offset:end]:
        yield read_image(path, channels, input_hw), label


def dataset_images(ref: DatasetRef, split: str, channels: int, input_hw: tuple[int, int],
                   limit: int | None = None, offset: int = 0) -> Iterator[tuple[np.ndarray, int]]:
    """(image (C, H, W) uint8, label) of a dataset's split for a model taking (channels, *input_hw)."""
    if ref.root is not None:
        yield from folder_images(ref.root, split, channels, input_hw, limit, offset)
        return
    from planner.data import fashion_mnist_arrays
    images, labels = fashion_mnist_arrays(split)                 # (N, 1, 28, 28) uint8, (N,) int64
    _check_shape(ref, images, channels, input_hw)
    end = len(images) if limit is None else min(len(images), offset + limit)
    for i in range(offset, end):
        yield images[i], int(labels[i])


def dataset_arrays(ref: DatasetRef, split: str, channels: int, input_hw: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A dataset's whole split: ((N, C, H, W) uint8, (N,) int64)."""
    if ref.root is None:
        from planner.data import fashion_mnist_arrays
        images, labels = fashion_mnist_arrays(split)
        _check_shape(ref, images, channels, input_hw)
        return images, labels
    _, samples = folder_samples(ref.root, split)
    images = np.empty((len(samples), channels, *input_hw), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):
        images[i] = read_image(path, channels, input_hw)
    return images, np.array([label for _, label in samples], dtype=np.int64)


def dataset_classes(ref: DatasetRef) -> int | None:
    """Classes of an image folder (its test split's, checked against train); None for built-ins."""
    return None if ref.root is None else len(folder_classes(ref.root, "test"))


def _check_shape(ref: DatasetRef, images: np.ndarray, channels: int, input_hw: tuple[int, int]) -> None:
    shape = tuple(images.shape[1:])
    if shape != (channels, *input_hw):
        raise ImageShapeError(f"{ref.name} images are {'x'.join(map(str, shape))}; the model takes "
                              f"{channels}x{input_hw[0]}x{input_hw[1]} (an imagefolder:DIR is resized to it)")
