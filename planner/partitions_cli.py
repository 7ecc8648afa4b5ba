"""`coinfer-plan partitions --model NAME [--json]`: the model's cut points (shared/CONTRACTS.md).

VGG-cfg models list the cfg walk's cuts (P = conv index); torchvision-graph models the cuts
planner.graph finds (P in execution order), with the graph node and (C, H, W) at the input size."""
from __future__ import annotations

import argparse
import json
import sys

from common.cli import parse_hw
from planner.registry import BuilderKind, UnknownModelError, get_spec, partition_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("partitions", help="list a model's cut points (index, graph node, C x H x W)",
                       description="List the places where the model can be cut (exactly one tensor crosses "
                                   "from head to tail), in execution order, with the graph node and the "
                                   "feature map's shape at the input size.")
    p.add_argument("--model", required=True, help="registry name, e.g. resnet18 or fmnist-vgg")
    p.add_argument("--input-size", type=parse_hw, default=None, help="image size HxW (default: the model's)")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    rec = p.add_argument_group("recording channel orders (torchvision-graph models)")
    rec.add_argument("--record-orders", metavar="DATASET", default=None,
                     help="measure the mean absolute activation at every cut that is not a conv+BN output over "
                          "training images of DATASET (fashion-mnist or imagefolder:DIR) and record the channel "
                          "orders beside --weights (FILE.channel-order.json; both ends load it with FILE)")
    rec.add_argument("--weights", metavar="FILE", default=None, help="state dict the orders are recorded for")
    rec.add_argument("--num-classes", type=int, default=None, help="classifier width of --weights")
    rec.add_argument("--images", type=int, default=None, metavar="N",
                     help="training images to measure over (default 300)")
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
    if args.record_orders is not None or args.weights is not None:
        return record(args, spec)
    doc = partitions_doc(args.model, args.input_size)
    c, h, w = doc["input_shape"]
    how = ("VGG cfg, P = conv index" if spec.builder is not BuilderKind.TORCHVISION_GRAPH
           else "torch.fx cut finder" + ("" if spec.default_weights else "; random init: timing only"))
    print(f"{args.model}: {len(doc['partitions'])} cut points for {c}x{h}x{w} input ({how})")
    print(f"{'P':>3} {'node':<28} {'C x H x W':>16}")
    for p in doc["partitions"]:
        print(f"{p['index']:>3} {p['name']:<28} {'x'.join(map(str, p['shape'])):>16}")
    if args.json:
        print(json.dumps(doc))
    return 0


def record(args: argparse.Namespace, spec) -> int:
    """`--record-orders DATASET --weights FILE`: write FILE.channel-order.json."""
    if args.record_orders is None or args.weights is None:
        print("coinfer-plan partitions: --record-orders and --weights go together", file=sys.stderr)
        return 2
    if spec.builder is not BuilderKind.TORCHVISION_GRAPH:
        print(f"coinfer-plan partitions: {args.model} ranks every cut BN-folded from its weights; "
              "--record-orders is for torchvision-graph models", file=sys.stderr)
        return 2
    from planner.channel_stats import RECORD_IMAGES, orders_path, record_channel_orders
    from planner.models import WeightsError, build_model
    from planner.train import load_dataset
    orders_path(args.weights).unlink(missing_ok=True)      # measured afresh, not read back
    try:
        model = build_model(args.model, num_classes=args.num_classes, weights=args.weights)
    except WeightsError as e:
        print(f"coinfer-plan partitions: {e}", file=sys.stderr)
        return 2
    images, _ = load_dataset(args.record_orders, "train", args.images or RECORD_IMAGES,
                             shape=(spec.in_channels, *spec.input_hw))
    path = record_channel_orders(model, args.weights, images, args.record_orders)
    print(f"recorded channel orders of {args.model} over {len(images)} images of {args.record_orders} in {path}")
    if args.json:
        print(json.dumps({"model": args.model, "record": str(path), "images": len(images)}))
    return 0
