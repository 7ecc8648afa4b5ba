"""`coinfer-plan partitions --model NAME [--json]`: the model's cut points (shared/CONTRACTS.md).

VGG-cfg models list the cfg walk's cuts (P = conv index); torchvision-graph models the cuts
planner.graph finds (P in execution order), with the graph node and (C, H, W) at the input size."""
from __future__ import annotations

import argparse
import json
import sys

from planner.registry import BuilderKind, UnknownModelError, get_spec, partition_table


def parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 224x224, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive HxW, got {text!r}")
    return h, w


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("partitions", help="list a model's cut points (index, graph node, C x H x W)",
                       description="List the places where the model can be cut (exactly one tensor crosses "
                                   "from head to tail), in execution order, with the graph node and the "
                                   "feature map's shape at the input size.")
    p.add_argument("--model", required=True, help="registry name, e.g. resnet18 or fmnist-vgg")
    p.add_argument("--input-size", type=parse_hw, default=None, help="image size HxW (default: the model's)")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    p.set_defaults(func=run)


def partitions_doc(name: str, input_hw: tuple[int, int] | None = None) -> dict:
    """{model, input_shape, partitions: [{index, name, shape [C, H, W]}]}."""
    spec = get_spec(name)
    table = partition_table(spec, input_hw)
    return {"model": name, "input_shape": [spec.in_channels, *(input_hw or spec.input_hw)],
            "partitions": [{"index": p.index, "name": p.node, "shape": list(p.shape)} for p in table]}


def run(args: argparse.Namespace) -> int:
    try:
        spec = get_spec(args.model)
    except UnknownModelError as e:
        print(f"coinfer-plan partitions: {e}", file=sys.stderr)
        return 2
    doc = partitions_doc(args.model, args.input_size)
    c, h, w = doc["input_shape"]
    how = ("torch.fx cut finder; random init: timing only" if spec.builder is BuilderKind.TORCHVISION_GRAPH
           else "VGG cfg, P = conv index")
    print(f"{args.model}: {len(doc['partitions'])} cut points for {c}x{h}x{w} input ({how})")
    print(f"{'P':>3} {'node':<28} {'C x H x W':>16}")
    for p in doc["partitions"]:
        print(f"{p['index']:>3} {p['name']:<28} {'x'.join(map(str, p['shape'])):>16}")
    if args.json:
        print(json.dumps(doc))
    return 0
