"""`coinfer-bench link`: the command line of the link bench (`python -m bench link ...`).

Parses arguments, checks that namespaces, nsenter and (with --quota) the CPU quota are
available here (exit 2 with the reason otherwise), builds a `LinkBenchConfig` and calls
`bench.linkbench.measure.run_link_bench`.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from bench.linkbench.config import BenchError, LinkBenchConfig
from bench.linkbench.images import synthetic_images
from common.cli import parse_hw
from bench.linkbench.markdown import markdown
from bench.linkbench.measure import run_link_bench
from testbed import LinkUnavailable, require_net_admin


def _rate_change(text: str) -> tuple[float, float]:
    a, sep, b = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected A:B (Mbps), got {text!r}")
    return float(a), float(b)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coinfer-bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("link", help="schemes over a tbf-shaped veth between namespaces (root)")
    p.add_argument("--model", default="fmnist-vgg")
    p.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="tbf rates, Mbps")
    p.add_argument("--quota", type=float, default=0.1, help="device CPU fraction (0: no quota)")
    p.add_argument("--schemes", nargs="*", default=[], help="P:C:B schemes; device-only, cloud-only, auto always run")
    p.add_argument("--limit", type=int, default=20, help="images per scheme")
    p.add_argument("--input-size", type=parse_hw, metavar="HxW", help="input size (cloud; default the model's)")
    p.add_argument("--weights", help="state dict for both sides (default: the shipped one)")
    p.add_argument("--num-classes", type=int, help="classifier width on both sides")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="device runtime: torch, or onnx on --export (then --weights/--num-classes are the "
                        "cloud's only: export the same ones)")
    p.add_argument("--export", metavar="DIR", help="--runtime onnx: a `coinfer-plan export` of the cloud's model")
    p.add_argument("--images", nargs="+", metavar="IMAGE",
                   help="image files (default: Fashion-MNIST for fmnist-vgg, else generated timing images)")
    p.add_argument("--db", help="auto: accuracy database")
    p.add_argument("--recipe", default=None, help="auto: plan over --db rows of this recipe prefix instead of the "
                                                   "cloud's bank")
    p.add_argument("--dataset-name", help="auto: dataset of the DB rows")
    req = p.add_mutually_exclusive_group()
    req.add_argument("--max-accuracy-loss", type=float, metavar="A")
    req.add_argument("--latency-ratio", type=float, metavar="R")
    req.add_argument("--max-latency-s", type=float, metavar="S")
    p.add_argument("--rate-change", type=_rate_change, metavar="A:B",
                   help="auto run at A Mbps switched to B with tc: frames/seconds until the plan follows")
    p.add_argument("--out", type=Path, help="directory for JSON, PNG per rate and markdown")
    p.add_argument("--json", action="store_true", help="last line of stdout: the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace, work: Path) -> LinkBenchConfig:
    from planner.models import get_spec
    requirement: tuple[str, ...] = ()
    for flag in ("max_accuracy_loss", "latency_ratio", "max_latency_s"):
        if getattr(args, flag) is not None:
            requirement = (f"--{flag.replace('_', '-')}", f"{getattr(args, flag):g}")
    spec = get_spec(args.model)
    images, synthetic = tuple(args.images or ()), False
    if not images and spec.dataset != "fashion-mnist":
        hw = args.input_size or spec.input_hw
        images, synthetic = tuple(synthetic_images(work / "images", args.limit, hw, spec.in_channels)), True
    return LinkBenchConfig(
        model=args.model, rates_mbps=tuple(args.rates), quota=args.quota or None, schemes=tuple(args.schemes),
        limit=args.limit, input_size=args.input_size, weights=args.weights, num_classes=args.num_classes,
        db=args.db, recipe=args.recipe, dataset_name=args.dataset_name, requirement=requirement,
        rate_change=args.rate_change, images=images, synthetic_images=synthetic, runtime=args.runtime,
        export=args.export)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        require_net_admin()
        if args.quota:
            from device.cpu_quota import QuotaUnavailable, require_cpu_quota
            try:
                require_cpu_quota()
            except QuotaUnavailable as e:
                raise LinkUnavailable(f"--quota: {e}") from e
        if shutil.which("nsenter") is None:
            raise LinkUnavailable("`nsenter` not found: install util-linux")
    except LinkUnavailable as e:
        print(f"coinfer-bench: {e}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="coinfer-bench-images-"))
    try:
        cfg = config_from_args(args, work)
        progress = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
        result = run_link_bench(cfg, args.out, progress)
    except BenchError as e:
        print(f"coinfer-bench: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
