"""CPU training of a registry model on its dataset, and the loop that scheme fine-tuning reuses.

One SGD loop (`fit`) trains any module that maps a normalised batch to logits: the full
model here, a scheme's pruned and quantized network in `planner.evaluate`. Everything
random (shuffling, augmentation, dropout, initialisation) is drawn from `seed`, and the
global RNG is restored afterwards, so a run is reproducible on the same machine.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from planner.data import IMAGE_HW
from planner.datasets import dataset_arrays, dataset_classes, parse_dataset
from planner.models import (WEIGHTS_DIR, BuilderKind, build_model, default_weights_path, file_sha256, get_spec,
                            model_names)
from planner.registry import NoDatasetError, UnsupportedModelError  # noqa: F401 - raised here, caught by the CLI

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum under a one-cycle (warm-up, cosine decay) learning-rate schedule."""

    epochs: float = 12.0          # passes over the training set; fractions allowed
    batch_size: int = 128         # images per step
    lr: float = 0.05              # peak learning rate
    warmup: float = 0.15          # fraction of the steps spent warming up (0: start at peak)
    momentum: float = 0.9         # Nesterov momentum
    weight_decay: float = 5e-4    # L2 on every parameter
    augment: bool = True          # random crop after zero-padding, and horizontal flip
    pad: int = 2                  # pixels of zero padding before the random crop
    seed: int = 0                 # shuffling, augmentation, dropout, initialisation
    threads: int = 2              # torch intra-op threads (CPU)
    train_limit: int | None = None  # first N training images only (tests); None = all

    def steps(self, n_images: int) -> int:
        return max(1, math.ceil(self.epochs * n_images / self.batch_size))


# The recipe scheme fine-tuning uses (planner.evaluate): a gentle, decaying rate from the
# trained weights; `epochs` is set per evaluation.
FINETUNE_CONFIG = TrainConfig(epochs=0.0, lr=0.01, warmup=0.0)


@dataclass(frozen=True)
class TrainResult:
    model: str
    weights_path: Path
    sha256: str
    top1_accuracy: float      # on the full test split (or the first test_limit images)
    test_size: int
    seconds: float            # wall time of training and testing
    config: TrainConfig
    command: str
    dataset: str = ""         # recorded name: `fashion-mnist` or `imagefolder:/abs/DIR`
    num_classes: int = 0      # classifier width


@functools.lru_cache(maxsize=4)
def _load_split(name: str, split: str, shape: tuple[int, int, int] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    ref = parse_dataset(name)
    if shape is None:
        if ref.is_folder:
            raise ValueError(f"expected the model's (C, H, W) to read {name}, got none")
        shape = (1, *IMAGE_HW)                      # the built-in Fashion-MNIST as it is
    x, y = dataset_arrays(ref, split, shape[0], shape[1:])
    return torch.from_numpy(x), torch.from_numpy(y)


def load_dataset(name: str, split: str, limit: int | None = None,
                 shape: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, C, H, W) uint8, (N,) int64) of a dataset (`fashion-mnist` or `imagefolder:DIR`),
    optionally the first `limit`. `shape` (C, H, W) is what the model takes: an image folder
    is decoded to it (required there), a built-in dataset is checked against it.

    Splits are parsed once per process and shared: callers must not modify them in place.
    """
    x, y = _load_split(parse_dataset(name).name, split, None if shape is None else tuple(shape))
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


# builder kinds whose networks train, fine-tune and bank here: a VGG cfg (pruned by state-dict
# surgery) and a graph network (channels dropped at the cut by masking; planner.evaluate)
TRAINABLE_BUILDERS = frozenset({BuilderKind.VGG_CFG, BuilderKind.TORCHVISION_GRAPH})


def require_trainable(model_name: str, weights: str | Path | None = None, dataset: str | None = None,
                      trained: bool = False) -> str:
    """Refuse, before anything is written, what cannot work; returns the dataset's recorded name.

    Training, scheme evaluation and banks need a builder kind in TRAINABLE_BUILDERS and a
    dataset (`dataset`, a `--dataset` spec, else the model's own); evaluation and banks
    (`trained`) also need weights trained here: `weights`, else the model's shipped file."""
    spec = get_spec(model_name)
    if spec.builder not in TRAINABLE_BUILDERS:
        names = ", ".join(sorted(k.value for k in TRAINABLE_BUILDERS))
        raise UnsupportedModelError(
            f"{model_name} is a {spec.builder.value} model: train, evaluate, evaluate-grid and bank build "
            f"need one of {names}")
    if trained and weights is None and default_weights_path(spec) is None:
        raise UnsupportedModelError(
            f"{model_name} has no trained weights here: evaluate, evaluate-grid and bank build need "
            f"--weights FILE trained on the dataset, or `coinfer-plan train --model {model_name}` first")
    if dataset is not None:
        return parse_dataset(dataset).name
    if spec.dataset is None:
        trainable = [n for n in model_names() if get_spec(n).dataset is not None]
        raise NoDatasetError(f"expected a model with a dataset in the registry ({', '.join(trainable)}) "
                             f"or --dataset, got {model_name!r}")
    return spec.dataset


def model_dataset(model_name: str, dataset: str | None = None) -> str:
    """The dataset's recorded name: `dataset` (a `--dataset` spec) when given, else the model's own."""
    return require_trainable(model_name, dataset=dataset)


def input_shape(model_name: str) -> tuple[int, int, int]:
    """(C, H, W) the model takes: what its images are decoded to."""
    spec = get_spec(model_name)
    return (spec.in_channels, *spec.input_hw)


def dataset_num_classes(dataset: str) -> int | None:
    """The classifier width a dataset needs: an image folder's class count; None: the model's own."""
    return dataset_classes(parse_dataset(dataset))


def augment_batch(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, H, W) uint8: random crop of the zero-padded image, random h-flip."""
    n, c, h, w = images.shape
    padded = nn.functional.pad(images, (pad, pad, pad, pad))                  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]                   # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]                   # (N, 1, 1, W)
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def fit(net: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
        desc: str = "train", progress: bool = True) -> float:
    """Train `net` (normalised (N, C, H, W) float -> (N, K) logits) in place; returns seconds.

    `images` (N, C, H, W) uint8 and `labels` (N,) int64; `preprocess` maps uint8 to the
    normalised input. The number of steps is ceil(epochs * N / batch_size); each pass
    over the data is a fresh permutation.
    """
    torch.set_num_threads(cfg.threads)
    n = images.shape[0]
    steps = cfg.steps(n)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG; restore it after
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                              weight_decay=cfg.weight_decay)
        warm = int(cfg.warmup * steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (
            (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))))
        loss_fn = nn.CrossEntropyLoss()
        net.train()
        order = torch.empty(0, dtype=torch.long)
        pos = 0
        bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, mininterval=2.0,
                   dynamic_ncols=True)
        for step in bar:
            if pos + cfg.batch_size > order.numel():  # a new pass: the rest of this one, then a fresh order
                order = torch.cat([order[pos:], torch.randperm(n, generator=gen)])
                pos = 0
            idx = order[pos:pos + cfg.batch_size]
            pos += cfg.batch_size
            x = images[idx]
            if cfg.augment:
                x = augment_batch(x, cfg.pad, gen)
            loss = loss_fn(net(preprocess(x)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.4f}")
        bar.close()
    net.eval()
    return time.perf_counter() - t0


@torch.no_grad()
def predict_logits(net: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor],
                   images: torch.Tensor, batch_size: int = 1000, progress: bool = False,
                   desc: str = "test") -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, K) float32 logits with `net` in eval mode."""
    net.eval()
    out = [net(preprocess(images[i:i + batch_size]))
           for i in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress,
                         leave=False)]
    return torch.cat(out)


def top1_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of (N, K) logits whose argmax is not the (N,) label: wrong / N, exactly."""
    return int((logits.argmax(1) != labels).sum()) / labels.numel()


def train_model(model_name: str, cfg: TrainConfig = TrainConfig(), out: str | Path | None = None,
                test_limit: int | None = None, progress: bool = True,
                command: str | None = None, dataset: str | None = None) -> TrainResult:
    """Train `model_name` from scratch on `dataset` (default: its own) and save its state dict to `out`."""
    dataset = model_dataset(model_name, dataset)
    shape = input_shape(model_name)
    spec = get_spec(model_name)
    if out is None:   # the shipped file only for the model's own dataset; others go under runs/weights
        ref = parse_dataset(dataset)
        out = (WEIGHTS_DIR / (spec.default_weights or f"{model_name}.pt") if dataset == spec.dataset
               else Path("runs") / "weights" / f"{model_name}-{ref.root.name if ref.root else ref.name}.pt")
    out = Path(out)
    t0 = time.perf_counter()
    x_train, y_train = load_dataset(dataset, "train", cfg.train_limit, shape)
    x_test, y_test = load_dataset(dataset, "test", test_limit, shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(model_name, num_classes=dataset_num_classes(dataset), use_default_weights=False)
    log.info("training %s on %d %s images for %g epochs (%d steps)", model_name,
             x_train.shape[0], dataset, cfg.epochs, cfg.steps(x_train.shape[0]))
    fit(model, model.preprocess, x_train, y_train, cfg, desc=f"train {model_name}", progress=progress)
    err = top1_error(predict_logits(model, model.preprocess, x_test, progress=progress), y_test)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    seconds = time.perf_counter() - t0
    return TrainResult(model=model_name, weights_path=out, sha256=file_sha256(out),
                       top1_accuracy=1.0 - err, test_size=int(x_test.shape[0]), seconds=seconds,
                       config=cfg, command=command or shlex.join(["coinfer-plan", *sys.argv[1:]]),
                       dataset=dataset, num_classes=model.num_classes)


def train_record(result: TrainResult) -> dict:
    """The JSON-able record written next to the weights."""
    return {"model": result.model, "file": result.weights_path.name, "sha256": result.sha256,
            "dataset": result.dataset or model_dataset(result.model), "num_classes": result.num_classes,
            "top1_accuracy": round(result.top1_accuracy, 4),
            "test_size": result.test_size, "seconds": round(result.seconds, 1),
            "command": result.command, "config": asdict(result.config),
            "torch": torch.__version__, "machine": machine_record()}


def machine_record() -> dict:
    """Where a training ran: the CPU model, its cores and how many this process may use (taskset)."""
    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": os.cpu_count(), "cores_allowed": allowed}
