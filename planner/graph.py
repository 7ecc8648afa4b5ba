"""Cut points found from the graph: trace a network with torch.fx, find where exactly one
tensor crosses from head to tail, and slice the traced graph there.

Walking the nodes in execution order, the values alive after node i are those made at or
before i that a node after i still reads (parameters, `get_attr`, are on both sides and do
not count).  A cut is valid after node i when that set is one value, node i itself, and
shape propagation on a sample input says it is a 4-D tensor (N, C, H, W).  Inside a
residual block the block's input stays alive until the sum, so nothing there is a cut; a
residual network yields its stem and block outputs.

A value in a permuted layout (after a permute or transpose, until it is permuted back) is no
cut: its dimensions are not (N, C, H, W).  Two rules keep the table to the places worth cutting (and give VGG exactly its conv
table): a cut whose only reader is a per-channel op or a local pooling (BN, an activation,
max-pooling, dropout) moves to that op's output, as the cfg walk cuts after conv, BN, ReLU
and pooling; and the output of a global (adaptive) pooling is no cut, it belongs to the
classifier.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

log = logging.getLogger(__name__)

# readers that a cut moves past: per-channel elementwise ops and local pooling
_ABSORB_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.MaxPool2d,
                   nn.Dropout, nn.Identity)
_ABSORB_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardswish, F.silu, F.max_pool2d, F.dropout}
_ABSORB_METHODS = {"relu", "relu_"}
# outputs that are never cuts: global pooling feeds the classifier
_GLOBAL_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_GLOBAL_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
# per-channel monotone ops between a conv+BN and a cut: the BN-folded ranking still applies
_MONOTONE_MODULES = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.Identity, nn.Dropout)


class GraphCutError(ValueError):
    """A network that cannot be traced, or a cut that is not in its graph."""


@dataclass(frozen=True)
class Cut:
    """One place where exactly one 4-D tensor crosses from head to tail."""

    index: int                     # P, in execution order
    node: str                      # the fx node whose output is cut
    shape: tuple[int, int, int]    # (C, H, W) at the sample input's size
    pooled: bool                   # the node is a max-pooling
    conv_bn: tuple[str, str] | None  # (conv, BN) module targets when the cut is their output
                                   # (through per-channel monotone ops only): BN-folded ranking applies


def trace(model: nn.Module) -> fx.GraphModule:
    """torch.fx trace of `model` in eval mode (control flow on `training` is resolved as eval)."""
    was_training = model.training
    model.eval()
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises TraceError, TypeError, ...
        raise GraphCutError(f"cannot trace {type(model).__name__} with torch.fx: {e}") from e
    finally:
        model.train(was_training)


def _is(node: fx.Node, gm: fx.GraphModule, modules: tuple, functions: set, methods: set = frozenset()) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), modules)
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_method":
        return node.target in methods
    return False


def _conv_bn_source(node: fx.Node, gm: fx.GraphModule) -> tuple[str, str] | None:
    """(conv, BN) targets when `node` is a BN of a conv, possibly behind monotone per-channel ops."""
    while node.op == "call_module" and isinstance(gm.get_submodule(node.target), _MONOTONE_MODULES):
        node = node.args[0]
    if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.BatchNorm2d):
        return None
    src = node.args[0]
    if (src.op == "call_module" and isinstance(gm.get_submodule(src.target), nn.Conv2d)
            and len(src.users) == 1):
        return (src.target, node.target)
    return None


def single_live_values(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes after which exactly one value, the node itself, is alive (execution order)."""
    nodes = list(gm.graph.nodes)
    last_use = {}
    for i, n in enumerate(nodes):
        for a in n.all_input_nodes:
            last_use[a] = i
    live: set[fx.Node] = set()
    out = []
    for i, n in enumerate(nodes):
        live = {v for v in live if last_use.get(v, -1) > i}
        if n.op not in ("get_attr", "output") and last_use.get(n, -1) > i:
            live.add(n)
        if live == {n} and n.op != "placeholder":
            out.append(n)
    return out


def _permuted(gm: fx.GraphModule) -> dict[fx.Node, bool]:
    """Whether each node's value is in a permuted layout (e.g. (N, H, W, C) inside a LayerNorm2d or
    a transformer stage): a permute or transpose flips its input's state, a conv restores
    (N, C, H, W), any other op inherits from its inputs.  A permuted 4-D value is no cut: its
    second dimension is not channels."""
    out: dict[fx.Node, bool] = {}
    for n in gm.graph.nodes:
        inherited = any(out.get(a, False) for a in n.all_input_nodes)
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d):
            out[n] = False
        elif (n.op == "call_method" and n.target in ("permute", "transpose")) or \
                (n.op == "call_function" and n.target in (torch.permute, torch.transpose)):
            out[n] = not inherited
        else:
            out[n] = inherited
    return out


def find_cuts(gm: fx.GraphModule, example: torch.Tensor) -> list[Cut]:
    """The cuts of a traced network, with (C, H, W) for `example` (N, C, H, W) as input."""
    with torch.no_grad():
        ShapeProp(gm).propagate(example)

    def is_4d(n: fx.Node) -> bool:
        meta = n.meta.get("tensor_meta")
        return meta is not None and hasattr(meta, "shape") and len(meta.shape) == 4

    permuted = _permuted(gm)
    candidates = [n for n in single_live_values(gm) if is_4d(n) and not permuted[n]
                  and not _is(n, gm, _GLOBAL_POOL_MODULES, _GLOBAL_POOL_FUNCTIONS)]
    chosen = set(candidates)
    cuts: list[Cut] = []
    for n in candidates:
        users = list(n.users)
        if (len(users) == 1 and users[0] in chosen
                and _is(users[0], gm, _ABSORB_MODULES, _ABSORB_FUNCTIONS, _ABSORB_METHODS)):
            continue                       # the cut moves past a per-channel op or pooling
        _, c, h, w = n.meta["tensor_meta"].shape
        cuts.append(Cut(index=len(cuts), node=n.name, shape=(int(c), int(h), int(w)),
                        pooled=_is(n, gm, (nn.MaxPool2d,), {F.max_pool2d}),
                        conv_bn=_conv_bn_source(n, gm)))
    if not cuts:
        raise GraphCutError(f"{type(gm).__name__}: no node where exactly one 4-D tensor crosses")
    return cuts


def cut_shapes(gm: fx.GraphModule, nodes: list[str], example: torch.Tensor) -> list[tuple[int, int, int]]:
    """(C, H, W) of the named nodes' outputs for `example` as input."""
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    by_name = {n.name: n for n in gm.graph.nodes}
    return [tuple(int(d) for d in by_name[name].meta["tensor_meta"].shape[1:]) for name in nodes]


def slice_graph(gm: fx.GraphModule, start: str | None, end: str | None) -> fx.GraphModule:
    """The part of `gm` after node `start` (None: from the input) up to node `end` (None: to the
    output), as a GraphModule taking one tensor; it shares `gm`'s submodules and parameters.
    Exact only between cuts: a value from before `start` other than `start` is an error."""
    nodes = list(gm.graph.nodes)
    names = [n.name for n in nodes]
    for what, name in (("start", start), ("end", end)):
        if name is not None and name not in names:
            raise GraphCutError(f"{what}: no node {name!r} in the graph")
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}

    def arg(a: fx.Node) -> fx.Node:
        if a not in env:
            if a.op != "get_attr":
                raise GraphCutError(f"node {a.name!r} crosses the cut after {start!r}: not a single-tensor cut")
            env[a] = g.node_copy(a, arg)
        return env[a]

    begin = 0
    if start is not None:
        begin = names.index(start) + 1
        env[nodes[begin - 1]] = g.placeholder("x")
    for n in nodes[begin:]:
        if n.op == "placeholder":
            env[n] = g.placeholder("x")
            continue
        if n.op == "output":
            g.output(fx.map_arg(n.args[0], arg))
            break
        env[n] = g.node_copy(n, arg)
        if n.name == end:
            g.output(env[n])
            break
    g.lint()
    return fx.GraphModule(gm, g)
