"""Graph architectures by name (torchvision's, or the project's own in planner.graph_archs),
split at the cuts planner.graph finds.

`GraphCNN` exposes what `SplitCNN` does (spec, num_classes, partitions, partition(P),
preprocess, head(x, P), tail(fm, P), segment(k), forward), so the profile, the search, the
cloud and the torch device use either.  Its state dict is torchvision's (the architecture's
modules are its own children), so `--weights` takes a torchvision checkpoint; without one
the network is a seeded random initialisation, the same in every process (timing only).

The traced graph is cut into segments between consecutive cuts: segment 0 runs from the
input to cut 0, segment k from cut k-1 to cut k, the last from the last cut to the logits;
head(P) is segments 0..P and tail(P) the rest, the graph's own nodes in its own order, so
tail(head(x)) is the model's output.

Channel ranking at a cut: where the cut is a conv's BN output (possibly behind ReLU or
max-pooling) the BN-folded L1 norm (as planner.pruning for VGG); elsewhere (a residual sum,
a projection without BN) the mean absolute activation over seeded inputs (`STATS_IMAGES`
uniform random images, seed 0): a function of the weights alone, so both ends compute the
same order, and the export records it for the ONNX device.  A record measured over training
images beside the weights (planner.channel_stats) takes the place of the seeded statistic.
"""
from __future__ import annotations

import functools
import logging

import torch
import torchvision
from torch import nn

from planner.cut_model import CutModel
from planner.graph_archs import ARCHS
from planner.graph import Cut, cut_shapes, find_cuts, slice_graph, trace
from planner.registry import BuilderKind, ModelSpec, PartitionSpec, file_sha256, get_spec

log = logging.getLogger(__name__)

STATS_IMAGES = 16         # seeded images for the mean-absolute-activation ranking
STATS_SEED = 0


class GraphCNN(CutModel):
    """A graph classification network (torchvision's or planner.graph_archs') that can run any head or tail of itself."""

    def __init__(self, spec: ModelSpec, num_classes: int | None = None, seed: int = 0):
        super().__init__()
        if spec.builder is not BuilderKind.TORCHVISION_GRAPH or not spec.arch:
            raise ValueError(f"expected a torchvision-graph registry entry, got {spec.name} ({spec.builder.value})")
        self.spec = spec
        self.num_classes = num_classes or spec.num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_arch(spec.arch, self.num_classes)
        for name, child in net.named_children():       # torchvision's state-dict keys, unchanged
            self.add_module(name, child)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1), persistent=False)
        gm = trace(net)
        self.__dict__["graph_module"] = gm                # not a child: its modules are ours already
        self.cuts: list[Cut] = find_cuts(gm, torch.zeros(1, spec.in_channels, *spec.input_hw))
        self.partitions = partitions_from_cuts(self.cuts)
        bounds = [None] + [c.node for c in self.cuts] + [None]
        self.__dict__["segments"] = [slice_graph(gm, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        self._orders: dict[int, tuple[int, ...]] = {}
        self.orders_source = f"{STATS_IMAGES} seeded images"   # what the activation ranking was measured on
        self.eval()

    def use_recorded_orders(self, weights: str) -> bool:
        """Take the activation-ranked orders from the record beside `weights`, when there is one
        (planner.channel_stats); True if there was."""
        from planner.channel_stats import load_channel_orders, orders_path
        path = orders_path(weights)
        if not path.is_file():
            return False
        orders = load_channel_orders(path, self.spec.name, file_sha256(weights),
                                     [p.channels for p in self.partitions])
        self._orders.update(orders)
        self.orders_source = path.name
        return True

    def segment(self, k: int) -> nn.Module:
        """Segment k: input -> cut 0 (k = 0), cut k-1 -> cut k, last cut -> logits (k = len(partitions))."""
        return self.segments[k]

    def head(self, x: torch.Tensor, p: int) -> torch.Tensor:
        """(N, C, H, W) normalised input -> (N, C_p, H_p, W_p) feature map at P."""
        self.partition(p)
        for seg in self.segments[: p + 1]:
            x = seg(x)
        return x

    def tail(self, fm: torch.Tensor, p: int) -> torch.Tensor:
        """(N, C_p, H_p, W_p) feature map at P -> (N, num_classes) logits."""
        self.partition(p)
        for seg in self.segments[p + 1:]:
            fm = seg(fm)
        return fm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)

    def channel_order(self, p: int) -> tuple[int, ...]:
        """Cut P's channels, most important first (stable: ties keep the lower index)."""
        if p not in self._orders:
            imp = channel_importance(self, p)
            self._orders[p] = tuple(int(i) for i in torch.sort(imp, descending=True, stable=True).indices)
        return self._orders[p]

    def ranking(self, p: int) -> str:
        """How cut P's channels are ranked: `bn-folded` or `mean-abs-activation`."""
        return "bn-folded" if self.cuts[self.partition(p).index].conv_bn else "mean-abs-activation"


def build_arch(arch: str, num_classes: int) -> nn.Module:
    """An architecture by name, randomly initialised: the project's own (planner.graph_archs.ARCHS)
    or torchvision's."""
    builder = ARCHS.get(arch) or functools.partial(torchvision.models.get_model, arch, weights=None)
    return builder(num_classes=num_classes)


def partitions_from_cuts(cuts: list[Cut], shapes: list[tuple[int, int, int]] | None = None
                         ) -> list[PartitionSpec]:
    shapes = shapes or [c.shape for c in cuts]
    return [PartitionSpec(index=c.index, channels=s[0], after_pooling=c.pooled, feature_end=c.index + 1,
                          conv_feature=-1, cfg_index=-1, height=s[1], width=s[2], node=c.node)
            for c, s in zip(cuts, shapes)]


@torch.no_grad()
def channel_importance(model: GraphCNN, p: int) -> torch.Tensor:
    """(C_p,) importance of cut P's channels: BN-folded L1 norm where the cut is a conv+BN
    output, else the mean absolute activation over seeded uniform images."""
    cut = model.cuts[model.partition(p).index]
    if cut.conv_bn is not None:
        conv, bn = (model.get_submodule(t) for t in cut.conv_bn)
        gain = bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)
        return gain * conv.weight.abs().sum(dim=(1, 2, 3))
    gen = torch.Generator().manual_seed(STATS_SEED)
    images = torch.randint(0, 256, (STATS_IMAGES, model.spec.in_channels, *model.spec.input_hw),
                           dtype=torch.uint8, generator=gen)
    return mean_abs_activation(model, p, images)


@torch.no_grad()
def mean_abs_activation(model: nn.Module, p: int, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(C_p,) mean absolute value of cut P's channels over `images` ((N, C, H, W) uint8), for
    any model with `preprocess` and `head` (SplitCNN too: bench.ranking compares it with the
    BN-folded ranking)."""
    total = None
    for i in range(0, len(images), batch):
        fm = model.head(model.preprocess(images[i:i + batch]), p)        # (n, C_p, H_p, W_p)
        s = fm.abs().sum(dim=(0, 2, 3), dtype=torch.float64)
        total = s if total is None else total + s
        hw = fm.shape[2] * fm.shape[3]
    return (total / (len(images) * hw)).float()


def graph_partition_table(spec: ModelSpec, input_hw: tuple[int, int]) -> list[PartitionSpec]:
    """The partition table of a graph model at an input size (the cut nodes do not depend on
    it; their shapes do)."""
    return list(_table(spec.name, tuple(input_hw)))


@functools.lru_cache(maxsize=64)
def _table(name: str, input_hw: tuple[int, int]) -> tuple[PartitionSpec, ...]:
    spec = get_spec(name)
    model = GraphCNN(spec)
    if tuple(input_hw) == tuple(spec.input_hw):
        return tuple(model.partitions)
    shapes = cut_shapes(model.graph_module, [c.node for c in model.cuts],
                        torch.zeros(1, spec.in_channels, *input_hw))
    return tuple(partitions_from_cuts(model.cuts, shapes))
