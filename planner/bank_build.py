"""`coinfer-plan bank build`: fine-tune, test and record each scheme's owned tail layer.

For a scheme P:C:B the device's network stays exactly as shipped (head BN statistics
too): the training network runs head(P) without gradients, keeps the C most important
channels (planner.pruning), puts them through the codec's B-bit round trip, and trains
only the bank entry's owned part (planner.bank.BankTail: for a VGG conv P+1 and its BN, or
the first classifier Linear; for a graph model the segment after the cut) with the rest of
the tail frozen in eval mode.  Each scheme is
tested on the test split, recorded in the accuracy database under the bank's recipe
(`bank<E>-seed<N>`, distinct from the `ft*` rows of whole-network fine-tuning), and written
to the bank directory; the manifest is rewritten after every scheme, so an interrupted
build resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from planner.accuracy_db import AccuracyDB, AccuracyRecord
from planner.bank import (BankEntry, BankError, BankTail, BankWeightsMismatch, Manifest, OwnedLayer, read_manifest,
                          save_entry, write_manifest, MANIFEST)
from planner.evaluate import _model_weights, ensure_base_record, quantize_dequantize, recipe_name
from planner.models import SplitCNN, build_model, file_sha256
from planner.parallel import PlanEngine, run_each
from planner.pruning import select_channels
from planner.scheme import Scheme, SchemeError
from planner.train import (FINETUNE_CONFIG, TrainConfig, dataset_num_classes, fit, input_shape, load_dataset, model_dataset,
                           predict_logits, top1_error)

log = logging.getLogger(__name__)

# Fine-tuning recipe of a bank entry: the scheme fine-tune's gentle decaying rate, twice as high (only one layer learns).
# `epochs` is set per build.
BANK_CONFIG = dataclasses.replace(FINETUNE_CONFIG, lr=0.02)


def bank_recipe(epochs: float, seed: int, train_limit: int | None = None, test_limit: int | None = None) -> str:
    """Recipe key of bank rows, e.g. `bank0.5-seed0` (subsets appended like ft rows)."""
    return recipe_name(epochs, seed, train_limit, test_limit, kind="bank")


class BankTrainNet(nn.Module):
    """Normalised input -> logits: frozen head(P), kept channels, B-bit round trip, the
    entry's owned layer (trained), the frozen rest of the tail."""

    def __init__(self, base: SplitCNN, scheme: Scheme, keep: Sequence[int]):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.tail = BankTail(base, scheme.partition, keep)
        self.scheme = scheme

    def train(self, mode: bool = True) -> "BankTrainNet":
        super().train(mode)
        self.base.eval()            # the device's network, BN statistics included, stays as shipped
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fm = self.base.head(x, self.scheme.partition)                        # (N, C_p, H, W)
            kept = quantize_dequantize(fm.index_select(1, self.tail.keep), self.scheme.bits)  # (N, C, H, W)
        return self.tail.forward_kept(kept)


@dataclass(frozen=True)
class BankBuildConfig:
    epochs: float = 1.0               # fine-tuning passes over the training set per scheme
    seed: int = 0                     # shuffling and augmentation
    train_limit: int | None = None    # first N training images only (tests)
    test_limit: int | None = None     # first N test images only (tests)
    threads: int = 2                  # torch CPU threads
    weights: str | None = None        # state dict; None = the model's shipped weights
    dataset: str | None = None        # `fashion-mnist` or `imagefolder:DIR`; None = the model's own


@dataclass(frozen=True)
class TrainedEntry:
    """One scheme's fine-tuned owned layer and its test, before anything is written."""

    keep: tuple[int, ...]              # kept channel indices, in the device's order
    top1_error: float
    test_size: int
    seconds: float                     # fine-tune + test, seconds
    layer: OwnedLayer
    state: dict[str, torch.Tensor]     # the owned layer's state dict


@dataclass(frozen=True)
class _Data:
    base: SplitCNN
    train: tuple[torch.Tensor, torch.Tensor]   # (N, C, H, W) uint8 images, (N,) labels
    test: tuple[torch.Tensor, torch.Tensor]
    train_cfg: TrainConfig


def _load(model_name: str, dataset: str, weights: str, cfg: BankBuildConfig) -> _Data:
    shape = input_shape(model_name)
    base = build_model(model_name, num_classes=dataset_num_classes(dataset), weights=weights)
    train_cfg = dataclasses.replace(BANK_CONFIG, epochs=cfg.epochs, seed=cfg.seed, threads=cfg.threads,
                                    train_limit=cfg.train_limit)
    return _Data(base, load_dataset(dataset, "train", cfg.train_limit, shape),
                 load_dataset(dataset, "test", cfg.test_limit, shape), train_cfg)


def train_entry(scheme: Scheme, data: _Data) -> TrainedEntry:
    """Fine-tune and test `scheme`'s owned layer on `data` (writes nothing)."""
    t0 = time.perf_counter()
    keep = select_channels(data.base, scheme.partition, scheme.channels)
    net = BankTrainNet(data.base, scheme, keep)
    if data.train_cfg.epochs > 0:
        fit(net, data.base.preprocess, *data.train, data.train_cfg, desc=f"fine-tune {scheme}", progress=False)
    x_test, y_test = data.test
    err = top1_error(predict_logits(net, data.base.preprocess, x_test), y_test)
    return TrainedEntry(tuple(keep), err, int(x_test.shape[0]), time.perf_counter() - t0, net.tail.layer,
                        {k: v.detach().clone() for k, v in net.tail.state_dict().items()})


def train_entry_detached(scheme: Scheme, model_name: str, dataset: str, weights: str,
                         cfg: BankBuildConfig) -> TrainedEntry:
    """`train_entry` as a Ray task: loads the network and data where it runs."""
    return train_entry(scheme, _load_cached(model_name, dataset, weights, cfg))


_load_cached = functools.lru_cache(maxsize=2)(_load)     # a Ray worker runs many schemes of one build


def build_bank(model_name: str, out: str | Path, schemes: Sequence[Scheme], db: AccuracyDB,
               cfg: BankBuildConfig = BankBuildConfig(), progress: bool = True,
               engine: PlanEngine = PlanEngine.PLAIN, ray_address: str | None = None) -> Manifest:
    """Build (or resume) the bank at `out` for `schemes`; returns the final manifest.

    A scheme already in the manifest (same recipe) is kept; a directory holding a bank of
    another model, recipe or weights is refused rather than mixed."""
    out = Path(out)
    dataset = model_dataset(model_name, cfg.dataset)
    weights = _model_weights(model_name, cfg.weights)
    sha = file_sha256(weights)
    recipe = bank_recipe(cfg.epochs, cfg.seed, cfg.train_limit, cfg.test_limit)
    base_rec = ensure_base_record(model_name, db, cfg.test_limit, weights, progress=False, dataset=dataset)
    manifest = Manifest(model_name, sha, recipe, dataset, base_rec.top1_error, ())
    if (out / MANIFEST).is_file():
        old = read_manifest(out)
        if old.weights_sha256 != sha:
            raise BankWeightsMismatch(old.weights_sha256, sha, f"bank {str(out)!r} (resume)")
        if (old.model, old.recipe) != (model_name, recipe):
            raise BankError(f"bank {str(out)!r} holds {old.model} recipe {old.recipe}; expected {model_name} "
                            f"recipe {recipe}: choose another --out, or the same --finetune-epochs/--seed")
        manifest = old
    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in dict.fromkeys(schemes) if manifest.entry(s) is None]
    for s in todo:
        if not s.is_split:
            raise SchemeError(f"expected P:C:B schemes for a bank, got {s}")
    if engine is PlanEngine.PLAIN:      # the data and the network are loaded once, here
        job = functools.partial(train_entry, data=_load(model_name, dataset, str(weights), cfg))
    else:                               # each task loads them where it runs (once per worker)
        job = functools.partial(train_entry_detached, model_name=model_name, dataset=dataset,
                                weights=str(weights.resolve()), cfg=cfg)
    bar = tqdm(total=len(todo), desc=f"bank {model_name}", unit="scheme", disable=not progress, dynamic_ncols=True)
    # the entries' files, the manifest and the rows are written here only, as each scheme arrives
    for scheme, t in run_each(job, todo, engine, cfg.threads, ray_address):
        bar.update()
        bar.set_postfix(scheme=str(scheme))
        name, file_sha = save_entry(out, model_name, sha, scheme, t.keep, t.layer, t.state)
        entry = BankEntry(scheme, t.keep, t.top1_error, t.top1_error - manifest.base_top1_error, t.test_size,
                          name, file_sha, t.seconds)
        manifest = dataclasses.replace(manifest, schemes=manifest.schemes + (entry,))
        write_manifest(out, manifest)
        db.upsert(AccuracyRecord(model_name, dataset, str(scheme), recipe, t.top1_error, t.test_size, t.seconds,
                                 str((out / name).resolve()), file_sha))
        log.info("bank %s: %s error %.4f (loss %+.4f) in %.1f s", model_name, scheme, t.top1_error,
                 entry.accuracy_loss, t.seconds)
    bar.close()
    if not (out / MANIFEST).is_file():
        write_manifest(out, manifest)
    return manifest
