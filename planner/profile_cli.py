"""`coinfer-plan profile --model NAME`: measure a latency profile on this machine."""
from __future__ import annotations

import argparse
import json
import sys

from planner.profile import MeasureConfig, measure_profile, profile_to_dict, save_profile


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure head/tail seconds per partition on this machine",
                       description="Measure device-head and cloud-tail seconds per partition, feature "
                                   "shapes and full-model seconds here (warm-up, median of repeats) "
                                   "and write the project's profile JSON.")
    p.add_argument("--model", required=True, help="registry name, e.g. fmnist-vgg")
    p.add_argument("--out", metavar="FILE", help="profile JSON to write (default MODEL.profile.json)")
    p.add_argument("--weights", metavar="FILE", help="state dict (default: the shipped weights)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier width for --weights")
    p.add_argument("--warmup", type=int, default=MeasureConfig.warmup, help="untimed runs first")
    p.add_argument("--repeats", type=int, default=MeasureConfig.repeats, help="timed runs (median kept)")
    p.add_argument("--batch", type=int, default=MeasureConfig.batch, help="images per forward pass")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--db", metavar="FILE", help="SQLite accuracy database to take the base error from")
    p.add_argument("--base-error", type=float, default=None, help="unmodified model's top-1 error")
    p.add_argument("--json", action="store_true", help="also print the profile as one JSON line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.models import UnknownModelError, WeightsError, get_spec
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        print("coinfer-plan profile: expected --repeats >= 1, --warmup >= 0, --batch >= 1", file=sys.stderr)
        return 2
    try:
        spec = get_spec(args.model)
    except UnknownModelError as e:
        print(f"coinfer-plan profile: {e}", file=sys.stderr)
        return 2
    base = args.base_error
    if base is None and args.db:
        from planner.accuracy_db import AccuracyDB
        with AccuracyDB(args.db) as db:
            base = db.base_error(args.model, spec.dataset or "")
    cfg = MeasureConfig(warmup=args.warmup, repeats=args.repeats, batch=args.batch, threads=args.threads)
    try:
        prof = measure_profile(args.model, cfg, args.weights, args.num_classes, base,
                               progress=sys.stderr.isatty())
    except WeightsError as e:
        print(f"coinfer-plan profile: {e}", file=sys.stderr)
        return 2
    out = args.out or f"{args.model}.profile.json"
    save_profile(prof, out)
    print(f"{'P':>2} {'C':>4} {'H x W':>9} {'head_s':>9} {'tail_s':>9}")
    for q in prof.partitions:
        print(f"{q.index:>2} {q.conv_channels:>4} {f'{q.height}x{q.width}':>9} "
              f"{q.device_head_s:>9.5f} {q.cloud_tail_s:>9.5f}")
    print(f"full model {prof.device_full_model_s:.5f} s on {prof.device_hardware}; wrote {out}")
    if args.json:
        print(json.dumps(profile_to_dict(prof)))
    return 0
