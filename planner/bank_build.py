"""`coinfer-plan bank build`: fine-tune, test and record each scheme's owned tail layer.

For a scheme P:C:B the device's network stays exactly as shipped (head BN statistics
too): the training network runs head(P) without gradients, keeps the C most important
channels (planner.pruning), puts them through the codec's B-bit round trip, and trains
only the bank entry's owned layer (planner.bank.BankTail: conv P+1 and its BN, or the
first classifier Linear) with the rest of the tail frozen in eval mode.  Each scheme is
tested on the test split, recorded in the accuracy database under the bank's recipe
(`bank<E>-seed<N>`, distinct from the `ft*` rows of whole-network fine-tuning), and written
to the bank directory; the manifest is rewritten after every scheme, so an interrupted
build resumes where it stopped.
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
from tqdm.auto import tqdm

from planner.accuracy_db import AccuracyDB, AccuracyRecord
from planner.bank import (BankEntry, BankError, BankTail, BankWeightsMismatch, Manifest, read_manifest,
                          save_entry, write_manifest, MANIFEST)
from planner.evaluate import _model_weights, ensure_base_record, quantize_dequantize, recipe_name
from planner.models import SplitCNN, build_model, file_sha256
from planner.pruning import select_channels
from planner.scheme import Scheme, SchemeError
from planner.train import (FINETUNE_CONFIG, dataset_num_classes, fit, input_shape, load_dataset, model_dataset,
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


def build_bank(model_name: str, out: str | Path, schemes: Sequence[Scheme], db: AccuracyDB,
               cfg: BankBuildConfig = BankBuildConfig(), progress: bool = True) -> Manifest:
    """Build (or resume) the bank at `out` for `schemes`; returns the final manifest.

    A scheme already in the manifest (same recipe) is kept; a directory holding a bank of
    another model, recipe or weights is refused rather than mixed."""
    out = Path(out)
    dataset = model_dataset(model_name, cfg.dataset)
    shape = input_shape(model_name)
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
    base = build_model(model_name, num_classes=dataset_num_classes(dataset), weights=weights)
    x_train, y_train = load_dataset(dataset, "train", cfg.train_limit, shape)
    x_test, y_test = load_dataset(dataset, "test", cfg.test_limit, shape)
    train_cfg = dataclasses.replace(BANK_CONFIG, epochs=cfg.epochs, seed=cfg.seed, threads=cfg.threads,
                                    train_limit=cfg.train_limit)
    bar = tqdm(todo, desc=f"bank {model_name}", unit="scheme", disable=not progress, dynamic_ncols=True)
    for scheme in bar:
        bar.set_postfix(scheme=str(scheme))
        t0 = time.perf_counter()
        keep = select_channels(base, scheme.partition, scheme.channels)
        net = BankTrainNet(base, scheme, keep)
        if cfg.epochs > 0:
            fit(net, base.preprocess, x_train, y_train, train_cfg, desc=f"fine-tune {scheme}", progress=False)
        err = top1_error(predict_logits(net, base.preprocess, x_test), y_test)
        seconds = time.perf_counter() - t0
        name, file_sha = save_entry(out, model_name, sha, scheme, keep, net.tail.layer, net.tail.state_dict())
        entry = BankEntry(scheme, tuple(keep), err, err - manifest.base_top1_error, int(x_test.shape[0]),
                          name, file_sha, seconds)
        manifest = dataclasses.replace(manifest, schemes=manifest.schemes + (entry,))
        write_manifest(out, manifest)
        db.upsert(AccuracyRecord(model_name, dataset, str(scheme), recipe, err, int(x_test.shape[0]), seconds,
                                 str((out / name).resolve()), file_sha))
        log.info("bank %s: %s error %.4f (loss %+.4f) in %.1f s", model_name, scheme, err,
                 entry.accuracy_loss, seconds)
    if not (out / MANIFEST).is_file():
        write_manifest(out, manifest)
    return manifest
