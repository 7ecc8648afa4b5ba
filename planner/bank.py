"""Scheme banks: fine-tuned tails for many `P:C:B` schemes over one unmodified network.

The device runs the shipped network exactly as trained, for any scheme: head(P), keep the
C most important channels (planner.pruning, from its own weights), quantize to B bits,
send.  What changes per scheme lives only on the cloud, and what an entry owns depends on
the builder kind (a table, `_OWNED_LAYERS`): for a VGG cfg the first parametric layer after
the cut (conv P+1 with its BN, or the first classifier Linear after the last conv),
restricted to the C kept input channels; for a graph network (fmnist-resnet) the whole
segment after the cut (the residual block that reads it, or the classifier), fed the kept
channels with the dropped ones zero.  Either is fine-tuned with everything else frozen.
The rest of the tail is the unmodified network's, shared by every scheme, so a bank
entry is small and switching between schemes costs nothing.
docs/bank.md records why this layer and not the whole tail.

Directory format (`coinfer-bank/1`):

    DIR/manifest.json
      {"format": "coinfer-bank/1", "model": "fmnist-vgg", "weights_sha256": "...",
       "recipe": "bank0.5-seed0", "dataset": "fashion-mnist", "base_top1_error": 0.0672,
       "schemes": [{"scheme": "1:8:4", "channel_indices": [...], "top1_error": 0.089,
                    "accuracy_loss": 0.022, "test_size": 10000, "file": "1-8-4.pt",
                    "sha256": "...", "seconds": 21.3}, ...]}
    DIR/1-8-4.pt   torch.save of {"format": "coinfer-bank-tail/1", "model", "scheme",
                   "weights_sha256", "channel_indices", "layer", "state_dict"}
                   (loadable with weights_only=True)
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from planner.models import SplitCNN
from planner.registry import BuilderKind, WeightsMismatch
from planner.scheme import Scheme, SchemeError

BANK_FORMAT = "coinfer-bank/1"
TAIL_FORMAT = "coinfer-bank-tail/1"
MANIFEST = "manifest.json"
BANKS_DIR = Path(__file__).resolve().parent / "banks"   # shipped banks: planner/banks/<model>/


class BankError(ValueError):
    """A bank directory or entry that is missing, malformed or does not fit its model."""


class BankWeightsMismatch(WeightsMismatch, BankError):
    """A bank built from other weights than the network it would serve with."""

    def __init__(self, bank_sha256: str, weights_sha256: str, where: str):
        super().__init__(bank_sha256, weights_sha256, where, "bank",
                         "rebuild the bank with `coinfer-plan bank build` from these weights, or run both "
                         "sides with the bank's weights")
        self.bank_sha256 = bank_sha256
        self.weights_sha256 = weights_sha256


def shipped_bank_dir(model_name: str) -> Path | None:
    """The model's shipped bank, planner/banks/<model>/, when it has one."""
    d = BANKS_DIR / model_name
    return d if (d / MANIFEST).is_file() else None


# -- the owned layer ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OwnedLayer:
    """What a bank entry owns after cut P, and where it sits in the network."""

    kind: str            # "conv": features[index] (+ BN at index+1); "linear": classifier[index];
                         # "segment": a graph model's segment `index` (planner.graph_models.GraphCNN.segment)
    index: int
    cells: int = 1       # linear: input columns per channel (pool_h * pool_w)

    @property
    def prefix(self) -> str:
        return {"conv": "features", "linear": "classifier", "segment": "segment"}[self.kind] + f".{self.index}"


def _cfg_owned_layer(model: SplitCNN, partition: int) -> OwnedLayer:
    """VGG cfg: conv P+1 (with its BN), or after the last conv the first classifier Linear,
    whose inputs are the flattened (C, pool_h, pool_w) map."""
    if partition + 1 < len(model.partitions):
        return OwnedLayer("conv", model.partitions[partition + 1].conv_feature)
    return OwnedLayer("linear", 0, model.spec.pool_hw[0] * model.spec.pool_hw[1])


def _graph_owned_layer(model: nn.Module, partition: int) -> OwnedLayer:
    """Graph network: the whole segment after cut P (the residual block that reads the cut, or
    after the last cut the classifier), on the full-width map with the dropped channels zero."""
    return OwnedLayer("segment", partition + 1)


_OWNED_LAYERS = {BuilderKind.VGG_CFG: _cfg_owned_layer, BuilderKind.TORCHVISION_GRAPH: _graph_owned_layer}


def owned_layer(model: nn.Module, partition: int) -> OwnedLayer:
    """The layer a bank entry owns for cuts at P, by the model's builder kind."""
    model.partition(partition)   # range check with the model's own message
    return _OWNED_LAYERS[model.spec.builder](model, partition)


def owned_state(model: SplitCNN, partition: int, keep: Sequence[int]) -> dict[str, torch.Tensor]:
    """The unmodified network's owned layer cut to the kept input channels: a bank entry's
    starting point (and, untuned, exactly what the unmodified tail computes on a zero-filled map)."""
    layer = owned_layer(model, partition)
    idx = torch.tensor(list(keep), dtype=torch.long)
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    if layer.kind == "conv":
        out["conv.weight"] = sd[f"{layer.prefix}.weight"][:, idx].clone()      # (out, C, k, k)
        out["conv.bias"] = sd[f"{layer.prefix}.bias"].clone()
        bn = f"features.{layer.index + 1}"
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"bn.{name}"] = sd[f"{bn}.{name}"].clone()
    else:
        w = sd[f"{layer.prefix}.weight"]                                         # (out, C_p * cells)
        out["linear.weight"] = w.view(w.shape[0], -1, layer.cells)[:, idx].reshape(w.shape[0], -1).clone()
        out["linear.bias"] = sd[f"{layer.prefix}.bias"].clone()
    return out


class CfgBankTail(nn.Module):
    """VGG cfg: (N, C_p, H, W) zero-filled map at P -> logits, through a scheme's owned layer (on
    the kept channels only) and the unmodified network's remaining tail (shared, not copied)."""

    def __init__(self, base: SplitCNN, partition: int, keep: Sequence[int]):
        super().__init__()
        self.layer = owned_layer(base, partition)
        self.partition = partition
        self.register_buffer("keep", torch.tensor(list(keep), dtype=torch.long), persistent=False)
        src = base.features[self.layer.index] if self.layer.kind == "conv" else base.classifier[0]
        c = len(keep)
        if self.layer.kind == "conv":
            self.conv = nn.Conv2d(c, src.out_channels, src.kernel_size, src.stride, src.padding)
            self.bn = nn.BatchNorm2d(src.out_channels)
        else:
            self.linear = nn.Linear(c * self.layer.cells, src.out_features)
        self.load_state_dict(owned_state(base, partition, keep), strict=True)
        # the shared rest, held by reference outside the module tree: not trained, not saved
        object.__setattr__(self, "_base", base)

    def forward(self, fm: torch.Tensor) -> torch.Tensor:
        """(N, C_p, H, W) map at P, dropped channels zero-filled -> (N, K) logits."""
        return self.forward_kept(fm.index_select(1, self.keep))

    def forward_kept(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) kept channels only, in ascending index order -> (N, K) logits."""
        base: SplitCNN = self._base
        if self.layer.kind == "conv":
            x = self.bn(self.conv(x))
            x = base.features[self.layer.index + 2:](x)                    # ReLU onwards
            return base.classifier(torch.flatten(base.avgpool(x), 1))
        x = base.features[base.partition(self.partition).feature_end:](x)
        x = torch.flatten(base.avgpool(x), 1)
        return base.classifier[1:](self.linear(x))


class GraphBankTail(nn.Module):
    """Graph network: (N, C_p, H, W) map at P -> logits, through the scheme's own copy of the
    segment after the cut (fed the kept channels, the dropped ones zero) and the unmodified
    network's later segments (shared, not copied)."""

    def __init__(self, base: nn.Module, partition: int, keep: Sequence[int]):
        super().__init__()
        self.layer = owned_layer(base, partition)
        self.partition = partition
        self.channels = base.partition(partition).channels
        self.register_buffer("keep", torch.tensor(list(keep), dtype=torch.long), persistent=False)
        self.segment = copy.deepcopy(base.segment(self.layer.index))   # the owned copy, trainable
        for p in self.segment.parameters():
            p.requires_grad_(True)
        object.__setattr__(self, "_base", base)

    def forward(self, fm: torch.Tensor) -> torch.Tensor:
        """(N, C_p, H, W) map at P (dropped channels are ignored) -> (N, K) logits."""
        return self.forward_kept(fm.index_select(1, self.keep))

    def forward_kept(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) kept channels only, in ascending index order -> (N, K) logits."""
        n, _, h, w = x.shape
        fm = x.new_zeros(n, self.channels, h, w).index_copy(1, self.keep, x)    # (N, C_p, H, W)
        x = self.segment(fm)
        for seg in self._base.segments[self.layer.index + 1:]:
            x = seg(x)
        return x


# builder kind -> the bank tail of that kind
_BANK_TAILS = {BuilderKind.VGG_CFG: CfgBankTail, BuilderKind.TORCHVISION_GRAPH: GraphBankTail}


def BankTail(base: nn.Module, partition: int, keep: Sequence[int]) -> nn.Module:  # noqa: N802 - reads as a class
    """A scheme's tail over `base`, untuned (the unmodified tail on the zero-filled map): the
    owned part has `forward_kept(kept)`, `keep` and `layer`, and its state dict is the entry."""
    return _BANK_TAILS[base.spec.builder](base, partition, keep)


# -- entries and the manifest -------------------------------------------------------------------
@dataclass(frozen=True)
class BankEntry:
    scheme: Scheme
    channel_indices: tuple[int, ...]
    top1_error: float
    accuracy_loss: float
    test_size: int
    file: str
    sha256: str
    seconds: float

    def as_dict(self) -> dict:
        return {"scheme": str(self.scheme), "channel_indices": list(self.channel_indices),
                "top1_error": self.top1_error, "accuracy_loss": self.accuracy_loss,
                "test_size": self.test_size, "file": self.file, "sha256": self.sha256,
                "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class Manifest:
    model: str
    weights_sha256: str
    recipe: str
    dataset: str
    base_top1_error: float
    schemes: tuple[BankEntry, ...]

    def as_dict(self) -> dict:
        return {"format": BANK_FORMAT, "model": self.model, "weights_sha256": self.weights_sha256,
                "recipe": self.recipe, "dataset": self.dataset, "base_top1_error": self.base_top1_error,
                "schemes": [e.as_dict() for e in sorted(self.schemes, key=lambda e: (e.scheme.partition, e.scheme.channels, e.scheme.bits))]}

    def entry(self, scheme: Scheme) -> BankEntry | None:
        return next((e for e in self.schemes if e.scheme == scheme), None)


def entry_file_name(scheme: Scheme) -> str:
    return f"{scheme.partition}-{scheme.channels}-{scheme.bits}.pt"


def read_manifest(directory: str | os.PathLike) -> Manifest:
    path = Path(directory) / MANIFEST
    try:
        d = json.loads(path.read_text())
    except OSError as e:
        raise BankError(f"bank {str(directory)!r}: cannot read {MANIFEST}: {e.strerror}") from e
    except ValueError as e:
        raise BankError(f"bank {str(directory)!r}: {MANIFEST} is not JSON: {e}") from e
    if not isinstance(d, dict) or d.get("format") != BANK_FORMAT:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise BankError(f"bank {str(directory)!r}: expected format {BANK_FORMAT!r}, got {got!r}")
    try:
        entries = tuple(BankEntry(Scheme.parse(e["scheme"]), tuple(int(i) for i in e["channel_indices"]),
                                  float(e["top1_error"]), float(e["accuracy_loss"]), int(e["test_size"]),
                                  str(e["file"]), str(e["sha256"]), float(e.get("seconds", 0.0)))
                        for e in d["schemes"])
        return Manifest(str(d["model"]), str(d["weights_sha256"]), str(d["recipe"]), str(d["dataset"]),
                        float(d["base_top1_error"]), entries)
    except (KeyError, TypeError, ValueError, SchemeError) as e:
        raise BankError(f"bank {str(directory)!r}: malformed {MANIFEST}: {e!r}") from e


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> None:
    """Atomically: readers (and an interrupted build) never see half a manifest."""
    path = Path(directory) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.as_dict(), indent=1) + "\n")
    tmp.replace(path)


def save_entry(directory: str | os.PathLike, model_name: str, weights_sha256: str, scheme: Scheme,
               keep: Sequence[int], layer: OwnedLayer, state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """Write one scheme's owned layer; returns (file name, sha256)."""
    from planner.models import file_sha256
    name = entry_file_name(scheme)
    path = Path(directory) / name
    tmp = path.with_name(name + ".tmp")
    torch.save({"format": TAIL_FORMAT, "model": model_name, "scheme": str(scheme),
                "weights_sha256": weights_sha256, "channel_indices": [int(i) for i in keep],
                "layer": layer.prefix,
                "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()}}, tmp)
    tmp.replace(path)
    return name, file_sha256(path)


@dataclass
class LoadedBank:
    """A bank ready to serve: per scheme, its manifest entry and tail module."""

    directory: Path
    manifest: Manifest
    tails: dict[Scheme, nn.Module]      # BankTail's

    def __len__(self) -> int:
        return len(self.tails)


def load_bank(directory: str | os.PathLike, base: SplitCNN, model_name: str, weights_sha256: str) -> LoadedBank:
    """Load every entry of a bank for `base` (the unmodified network it serves with).

    Refuses a bank of another model, or one built from other weights (both sha256s named),
    and an entry whose file, scheme or channels disagree with the manifest."""
    directory = Path(directory)
    m = read_manifest(directory)
    if m.model != model_name:
        raise BankError(f"bank {str(directory)!r} is for {m.model}, not {model_name}")
    if m.weights_sha256 != weights_sha256:
        raise BankWeightsMismatch(m.weights_sha256, weights_sha256, f"bank {str(directory)!r}")
    tails: dict[Scheme, nn.Module] = {}
    for e in m.schemes:
        where = f"bank {str(directory)!r} entry {e.scheme}"
        try:
            obj = torch.load(directory / e.file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a file it cannot read
            raise BankError(f"{where}: cannot load {e.file} with weights_only=True: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("format") != TAIL_FORMAT:
            raise BankError(f"{where}: expected format {TAIL_FORMAT!r} in {e.file}")
        if obj.get("scheme") != str(e.scheme) or list(obj.get("channel_indices", [])) != list(e.channel_indices):
            raise BankError(f"{where}: {e.file} holds scheme {obj.get('scheme')} with other channels "
                            f"than the manifest says")
        if obj.get("weights_sha256") != weights_sha256:
            raise BankWeightsMismatch(str(obj.get("weights_sha256")), weights_sha256, where)
        if len(e.channel_indices) != e.scheme.channels:
            raise BankError(f"{where}: expected {e.scheme.channels} channel indices, got {len(e.channel_indices)}")
        try:
            tail = BankTail(base, e.scheme.partition, e.channel_indices)
            tail.load_state_dict(obj["state_dict"], strict=True)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise BankError(f"{where}: state dict does not fit {model_name}: {str(exc).splitlines()[0]}") from exc
        tails[e.scheme] = tail.eval()
    return LoadedBank(directory, m, tails)
