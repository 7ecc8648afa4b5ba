"""Channel pruning at a cut: importance, selection and state-dict surgery.

Importance of conv P's output channels is the L1 norm of the conv filter with its BN
folded in (|gamma| / sqrt(var + eps) times the filter's L1 norm); a scheme keeps the C
most important, in ascending original order, so device and cloud agree on the kept
channels from the weights alone.  Imports no training code: the device runtime uses it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from planner.artifact import scheme_spec
from planner.models import SplitCNN
from planner.scheme import Scheme, kept_channels


def channel_importance(model: SplitCNN, partition: int) -> torch.Tensor:
    """(C_p,) importance of conv P's output channels: L1 norm of the BN-folded filter."""
    k = model.partition(partition).conv_feature
    conv: nn.Conv2d = model.features[k]
    bn: nn.BatchNorm2d = model.features[k + 1]
    gain = bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps)
    return gain * conv.weight.detach().abs().sum(dim=(1, 2, 3))


def channel_order(model: SplitCNN, partition: int) -> tuple[int, ...]:
    """Conv P's channels from most to least important (a stable sort: ties keep the lower
    index, so the order is deterministic); the export carries it to the ONNX device.  A graph
    model (planner.graph_models.GraphCNN) ranks its own cuts."""
    if not isinstance(model, SplitCNN):
        return model.channel_order(partition)
    imp = channel_importance(model, partition)
    return tuple(int(i) for i in torch.sort(imp, descending=True, stable=True).indices)


def ranking(model: SplitCNN, partition: int) -> str:
    """How cut P's channels are ranked: `bn-folded` (every VGG cut) or, at a graph model's cut
    that is not a conv+BN output, `mean-abs-activation` (planner.graph_models)."""
    if not isinstance(model, SplitCNN):
        return model.ranking(partition)
    model.partition(partition)
    return "bn-folded"


def select_channels(model: SplitCNN, partition: int, channels: int) -> tuple[int, ...]:
    """The `channels` most important channels of cut P, ascending original indices."""
    return kept_channels(channel_order(model, partition), channels, partition, model.spec.name)


def prune_state_dict(model: SplitCNN, partition: int, keep: Sequence[int]) -> dict[str, torch.Tensor]:
    """State dict of `model` with conv P's outputs (and the next layer's inputs) cut to `keep`."""
    spec = model.spec
    idx = torch.tensor(list(keep), dtype=torch.long)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    convs = [p.conv_feature for p in model.partitions]
    k = convs[partition]
    for name in ("weight", "bias"):
        sd[f"features.{k}.{name}"] = sd[f"features.{k}.{name}"][idx]
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"features.{k + 1}.{name}"] = sd[f"features.{k + 1}.{name}"][idx]
    if partition + 1 < len(convs):  # next conv's input channels
        key = f"features.{convs[partition + 1]}.weight"
        sd[key] = sd[key][:, idx]
    else:  # first classifier Linear: inputs are the flattened (C, pool_h, pool_w) map
        w = sd["classifier.0.weight"]                                   # (out, C_p * ph * pw)
        cells = spec.pool_hw[0] * spec.pool_hw[1]
        sd["classifier.0.weight"] = w.view(w.shape[0], -1, cells)[:, idx].reshape(w.shape[0], -1)
    return sd


def pruned_model(model: SplitCNN, scheme: Scheme) -> tuple[SplitCNN, tuple[int, ...]]:
    """A SplitCNN whose partition P keeps the scheme's C most important channels of `model`."""
    keep = select_channels(model, scheme.partition, scheme.channels)
    net = SplitCNN(scheme_spec(model.spec, scheme.partition, scheme.channels), model.num_classes)
    net.load_state_dict(prune_state_dict(model, scheme.partition, keep), strict=True)
    return net.eval(), keep
