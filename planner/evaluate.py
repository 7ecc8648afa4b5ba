"""Scheme evaluation: prune, quantize at the cut, fine-tune, test, record.

For a scheme `P:C:B` the network keeps the C most important output channels of conv P
(importance: L1 norm of the conv filter with its BN folded in, |gamma| / sqrt(var + eps)
times the filter's L1 norm), drops the others from conv P, its BN and the next layer's
inputs, and puts a B-bit fake quantizer at the cut whose forward is exactly the codec's
math (per sample and channel min/max, uniform levels) and whose backward is the identity
(straight-through). It is fine-tuned from the trained weights for E epochs (fractions
allowed) and tested on the full test split; the row goes to the accuracy database and the
fine-tuned weights to a scheme artifact (planner.artifact).

A graph network (planner.graph_models; a cut may feed a residual sum) is not pruned: the
dropped channels are masked to zero after the fake quantizer (`MaskedSchemeNet`), which is
what the cloud's unmodified tail computes on a decoded frame; no artifact is written.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from planner.accuracy_db import BASE_SCHEME, AccuracyDB, AccuracyRecord
from planner.artifact import save_artifact
from planner.models import (BuilderKind, SplitCNN, WeightsError, build_model, conv_widths, default_weights_path,
                            file_sha256, get_spec)
from planner.pruning import pruned_model, select_channels
from planner.scheme import Scheme, SchemeError
from planner.train import (FINETUNE_CONFIG, TrainConfig, dataset_num_classes, fit, input_shape, load_dataset,
                           model_dataset, predict_logits, top1_error)

log = logging.getLogger(__name__)

DB_DIR = Path(__file__).resolve().parent / "db"
ARTIFACT_DIR = Path("runs") / "artifacts"  # relative to the working directory; git-ignored
GRID_CHANNELS: tuple[int | None, ...] = (1, 2, 4, 8, 16, None)  # None: all channels of conv P
GRID_BITS: tuple[int, ...] = (1, 2, 4, 8)


def default_db_path(model_name: str) -> Path:
    """The model's shipped accuracy database, planner/db/<model>.sqlite."""
    return DB_DIR / f"{model_name}.sqlite"


# -- the fake quantizer ---------------------------------------------------------------------
def quantize_dequantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, C, H, W) float -> same, after the codec's uniform B-bit round trip.

    Per sample and channel: lo = min, hi = max, levels = 2**B - 1, scale = (hi - lo) / levels
    (0 for a constant channel), code = clip(round((x - lo) / scale), 0, levels),
    x' = lo + code * scale. Computed in float32.
    """
    x = x.float()
    levels = 2 ** bits - 1
    lo = x.amin(dim=(2, 3), keepdim=True)                      # (N, C, 1, 1)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = (hi - lo) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    code = torch.where(scale > 0, torch.round((x - lo) / safe), torch.zeros_like(x)).clamp_(0, levels)
    return lo + code * scale


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:  # noqa: D401
        return quantize_dequantize(x, bits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def fake_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """`quantize_dequantize` forward, identity gradient (straight-through estimator)."""
    return _StraightThrough.apply(x, bits)


class MaskedSchemeNet(nn.Module):
    """Normalised input -> logits through head(P), the kept channels' B-bit fake quantizer with
    the dropped channels zeroed, tail(P): what the cloud's unmodified tail computes on a
    decoded frame.  For graph networks, whose cut may feed a residual sum: no state-dict
    surgery, the network is the trained one whatever the scheme."""

    def __init__(self, model: nn.Module, scheme: Scheme, keep: Sequence[int]):
        super().__init__()
        self.model = model
        self.partition = scheme.partition
        self.bits = scheme.bits
        mask = torch.zeros(model.partition(scheme.partition).channels)
        mask[list(keep)] = 1.0
        self.register_buffer("mask", mask.view(1, -1, 1, 1), persistent=False)   # (1, C_p, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fm = self.model.head(x, self.partition)                     # (N, C_p, H_p, W_p)
        # per-channel quantization: quantizing every channel then zeroing the dropped ones is
        # the kept channels' round trip, zero-filled
        return self.model.tail(fake_quantize(fm, self.bits) * self.mask, self.partition)


class SchemeNet(nn.Module):
    """Normalised input -> logits through head(P), the B-bit fake quantizer, tail(P)."""

    def __init__(self, model: SplitCNN, scheme: Scheme):
        super().__init__()
        self.model = model
        self.partition = scheme.partition
        self.bits = scheme.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fm = self.model.head(x, self.partition)                     # (N, C, H_p, W_p)
        return self.model.tail(fake_quantize(fm, self.bits), self.partition)


def _pruned_scheme_net(model: SplitCNN, scheme: Scheme) -> tuple[SplitCNN, tuple[int, ...], nn.Module]:
    """VGG cfg: the network pruned to the kept channels (its state dict is the artifact)."""
    pruned, keep = pruned_model(model, scheme)
    return pruned, keep, SchemeNet(pruned, scheme)


def _masked_scheme_net(model: nn.Module, scheme: Scheme) -> tuple[None, tuple[int, ...], nn.Module]:
    """Graph network: the trained network with the dropped channels masked; no artifact (a graph
    model's scheme is served by the unmodified network or a bank, planner.bank)."""
    keep = select_channels(model, scheme.partition, scheme.channels)
    return None, keep, MaskedSchemeNet(model, scheme, keep)


# builder kind -> (model, scheme) -> (pruned network or None, kept channels, the scheme's network)
_SCHEME_NETS = {BuilderKind.VGG_CFG: _pruned_scheme_net, BuilderKind.TORCHVISION_GRAPH: _masked_scheme_net}


# -- evaluation ---------------------------------------------------------------------------------
def recipe_name(finetune_epochs: float, seed: int, train_limit: int | None = None,
                test_limit: int | None = None, kind: str = "ft") -> str:
    """Recipe key of a fine-tune, e.g. `ft0.25-seed0` (subsets appended: `-train512-test256`);
    `kind` names what was fine-tuned (`ft`: the whole network, `bank`: a bank entry's layer)."""
    name = f"{kind}{finetune_epochs:g}-seed{seed}"
    if train_limit is not None:
        name += f"-train{train_limit}"
    if test_limit is not None:
        name += f"-test{test_limit}"
    return name


def base_recipe(weights_sha256: str, test_limit: int | None = None) -> str:
    """Recipe key of the unmodified model's row: the trained weights it was tested with."""
    return f"weights-{weights_sha256[:12]}" + (f"-test{test_limit}" if test_limit is not None else "")


def _model_weights(model_name: str, weights: str | Path | None) -> Path:
    path = Path(weights) if weights is not None else default_weights_path(get_spec(model_name))
    if path is None or not path.is_file():
        raise WeightsError(f"no trained weights for {model_name}; run `coinfer-plan train --model "
                           f"{model_name}` or pass weights")
    return path


def ensure_base_record(model_name: str, db: AccuracyDB, test_limit: int | None = None,
                       weights: str | Path | None = None, progress: bool = True,
                       dataset: str | None = None) -> AccuracyRecord:
    """The unmodified model's row for these weights and test set (of `dataset`, default the
    model's own), evaluated if absent."""
    dataset = model_dataset(model_name, dataset)
    path = _model_weights(model_name, weights)
    recipe = base_recipe(file_sha256(path), test_limit)
    rec = db.get(model_name, dataset, BASE_SCHEME, recipe)
    if rec is not None:
        return rec
    t0 = time.perf_counter()
    model = build_model(model_name, num_classes=dataset_num_classes(dataset), weights=path)
    x_test, y_test = load_dataset(dataset, "test", test_limit, input_shape(model_name))
    err = top1_error(predict_logits(model, model.preprocess, x_test, progress=progress,
                                    desc=f"test {model_name}"), y_test)
    rec = AccuracyRecord(model_name, dataset, BASE_SCHEME, recipe, err, int(x_test.shape[0]),
                         time.perf_counter() - t0)
    db.upsert(rec)
    return db.get(model_name, dataset, BASE_SCHEME, recipe) or rec


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation produced, besides its database row."""

    record: AccuracyRecord
    base_error: float
    accuracy_loss: float
    channel_indices: tuple[int, ...]
    finetune_s: float
    test_s: float
    logits: torch.Tensor       # (N_test, K) float32


def evaluate(model_name: str, scheme: Scheme, finetune_epochs: float, db: AccuracyDB,
             seed: int = 0, train_limit: int | None = None, test_limit: int | None = None,
             artifact_dir: str | Path | None = None, *, save: bool = True,
             weights: str | Path | None = None, progress: bool = True,
             finetune: TrainConfig = FINETUNE_CONFIG, dataset: str | None = None) -> Evaluation:
    """Build, fine-tune and test `scheme` on `dataset` (default: the model's own); record its
    row (and artifact when `save`)."""
    if not scheme.is_split:
        raise SchemeError(f"expected a P:C:B scheme to evaluate, got {scheme}")
    if finetune_epochs < 0:
        raise ValueError(f"expected finetune_epochs >= 0, got {finetune_epochs}")
    t0 = time.perf_counter()
    dataset = model_dataset(model_name, dataset)
    shape = input_shape(model_name)
    base = ensure_base_record(model_name, db, test_limit, weights, progress, dataset)
    model = build_model(model_name, num_classes=dataset_num_classes(dataset),
                        weights=_model_weights(model_name, weights))
    pruned, keep, net = _SCHEME_NETS[model.spec.builder](model, scheme)
    recipe = recipe_name(finetune_epochs, seed, train_limit, test_limit)
    finetune_s = 0.0
    if finetune_epochs > 0:
        x_train, y_train = load_dataset(dataset, "train", train_limit, shape)
        cfg = dataclasses.replace(finetune, epochs=finetune_epochs, seed=seed, train_limit=train_limit)
        finetune_s = fit(net, model.preprocess, x_train, y_train, cfg,
                         desc=f"fine-tune {scheme}", progress=progress)
    t1 = time.perf_counter()
    x_test, y_test = load_dataset(dataset, "test", test_limit, shape)
    logits = predict_logits(net, model.preprocess, x_test, progress=progress, desc=f"test {scheme}")
    err = top1_error(logits, y_test)
    test_s = time.perf_counter() - t1
    art_path = art_sha = None
    if save and pruned is not None:
        directory = Path(artifact_dir) if artifact_dir is not None else ARTIFACT_DIR
        art_path = directory / f"{model_name}_{scheme.partition}-{scheme.channels}-{scheme.bits}_{recipe}.pt"
        art_sha = save_artifact(art_path, model_name, scheme, keep, recipe, pruned.state_dict())
        art_path = str(art_path.resolve())
    rec = AccuracyRecord(model_name, dataset, str(scheme), recipe, err, int(x_test.shape[0]),
                         time.perf_counter() - t0, art_path, art_sha)
    db.upsert(rec)
    return Evaluation(record=rec, base_error=base.top1_error, accuracy_loss=err - base.top1_error,
                      channel_indices=keep, finetune_s=finetune_s, test_s=test_s, logits=logits)


def evaluate_detached(scheme: Scheme, model_name: str, finetune_epochs: float, base: AccuracyRecord,
                      **kwargs) -> Evaluation:
    """`evaluate` without the caller's database (a Ray task may run anywhere): the base row is
    given, the scheme's row goes to a private in-memory database and comes back in the result
    for the caller to record; the logits are dropped (they would only travel)."""
    with AccuracyDB(":memory:") as db:
        db.upsert(base)
        ev = evaluate(model_name, scheme, finetune_epochs, db, **kwargs)
    return dataclasses.replace(ev, logits=torch.empty(0))


def evaluate_scheme(model_name: str, scheme: Scheme, finetune_epochs: float, db: AccuracyDB,
                    seed: int = 0, train_limit: int | None = None, test_limit: int | None = None,
                    artifact_dir: str | Path | None = None) -> AccuracyRecord:
    """Evaluate a `P:C:B` scheme, record its row and write its artifact; returns the row.

    Accuracy loss is `row.top1_error - db.base_error(model, dataset)`; the unmodified
    model's row (BASE_SCHEME) is evaluated first when the database lacks it.
    """
    return evaluate(model_name, scheme, finetune_epochs, db, seed, train_limit, test_limit,
                    artifact_dir).record


def grid_schemes(model_name: str, channels: Sequence[int | None] = GRID_CHANNELS,
                 bits: Sequence[int] = GRID_BITS) -> list[Scheme]:
    """Every partition x C (None: all channels; C above the width is dropped) x B."""
    widths = conv_widths(get_spec(model_name))
    out: list[Scheme] = []
    for p, width in enumerate(widths):
        cs = sorted({width if c is None else c for c in channels if c is None or c <= width})
        out += [Scheme.split(p, c, b) for c in cs for b in bits]
    return out
