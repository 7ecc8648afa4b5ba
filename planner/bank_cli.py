"""`coinfer-plan bank build`: a thin adapter over planner.bank_build (shared/CONTRACTS.md)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from planner.bank_build import BankBuildConfig
from planner.models import model_names
from planner.parallel import add_engine_args, check_engine_args
from planner.scheme import Scheme

_D = BankBuildConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bank = subparsers.add_parser("bank", help="banks of fine-tuned tails the cloud serves (see `bank build -h`)")
    sub = bank.add_subparsers(dest="bank_command", required=True, metavar="COMMAND")
    b = sub.add_parser(
        "build", help="fine-tune, test and record each scheme's tail into a bank directory",
        description="For each scheme, fine-tune what the cloud runs after the cut (for a VGG the first layer "
                    "after it, on the kept channels; for a graph model the segment after it) with the device's network left exactly as shipped, test it, record "
                    "the row in the accuracy database and write the bank directory. Resumes when interrupted.")
    b.add_argument("--model", required=True, choices=model_names())
    b.add_argument("--dataset", default=None,
                   help="fashion-mnist or imagefolder:DIR (ImageFolder layout; default: the model's own dataset)")
    b.add_argument("--out", type=Path, default=None, help="bank directory (default: planner/banks/<model>)")
    b.add_argument("--schemes", default="grid",
                   help="grid (every partition x C in 1,2,4,8,16,all x B in 1,2,4,8), frontier (the grid "
                        "schemes predicted faster than both single ends somewhere in --frontier-mbps x "
                        "--frontier-speeds: only these can be on the latency/accuracy frontier there), or "
                        "P:C:B,P:C:B,...")
    b.add_argument("--finetune-epochs", type=float, default=_D.epochs, help="passes over the training set per scheme")
    b.add_argument("--seed", type=int, default=_D.seed)
    b.add_argument("--db", default=None, help="accuracy database to record rows in (default: the model's shipped one)")
    b.add_argument("--weights", default=None, help="state dict (default: the model's shipped weights)")
    b.add_argument("--train-limit", type=int, default=None, help="first N training images only")
    b.add_argument("--test-limit", type=int, default=None, help="first N test images only")
    b.add_argument("--threads", type=int, default=_D.threads, help="torch CPU threads")
    b.add_argument("--profile", default=None,
                   help="frontier: latency profile whose bytes are what the wire carries, e.g. one written by "
                        "`coinfer-device ... --profile-out FILE` (required with --schemes frontier)")
    b.add_argument("--frontier-mbps", default="0.02,10", help="frontier: uplink range LO,HI in Mbps")
    b.add_argument("--frontier-speeds", default="0.01,1",
                   help="frontier: device speed range LO,HI as fractions of the profiled device")
    b.add_argument("--frontier-margin", type=float, default=0.1,
                   help="frontier: also take schemes within this fraction of the faster single end (model error)")
    add_engine_args(b)
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    b.set_defaults(func=_build)


def _range(text: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"coinfer-plan: {name}: expected LO,HI, got {text!r}") from None
    if not 0 < lo <= hi:
        raise SystemExit(f"coinfer-plan: {name}: expected 0 < LO <= HI, got {text!r}")
    return lo, hi


def select_schemes(args: argparse.Namespace) -> list[Scheme]:
    from planner.evaluate import grid_schemes
    if args.schemes == "grid":
        return grid_schemes(args.model)
    if args.schemes != "frontier":
        return [Scheme.parse(s) for s in args.schemes.split(",") if s.strip()]
    from planner.frontier import schemes_beating_single_ends
    from planner.profile import load_profile
    if not args.profile:
        raise SystemExit("coinfer-plan: --schemes frontier needs --profile FILE, a profile whose bytes are what "
                         "the wire carries (e.g. written by `coinfer-device infer --scheme auto --profile-out FILE`)")
    profile = load_profile(args.profile)
    (blo, bhi), (slo, shi) = _range(args.frontier_mbps, "--frontier-mbps"), _range(args.frontier_speeds,
                                                                                  "--frontier-speeds")
    best = schemes_beating_single_ends(profile, grid_schemes(args.model), np.geomspace(blo, bhi, 15),
                                       np.geomspace(slo, shi, 9), margin=args.frontier_margin)
    return sorted(best, key=lambda s: -best[s])        # the widest margins first


def _build(args: argparse.Namespace) -> int:
    from planner.accuracy_db import AccuracyDB
    from planner.bank import BANKS_DIR
    from planner.bank_build import build_bank
    from planner.evaluate import default_db_path
    from planner.train import require_trainable
    # before listing schemes or opening the database: no weights or no dataset is refused by name
    require_trainable(args.model, args.weights, args.dataset, trained=True)
    engine = check_engine_args(args)
    schemes = select_schemes(args)
    out = args.out or BANKS_DIR / args.model
    cfg = BankBuildConfig(epochs=args.finetune_epochs, seed=args.seed, train_limit=args.train_limit,
                          test_limit=args.test_limit, threads=args.threads, weights=args.weights,
                          dataset=args.dataset)
    t0 = time.perf_counter()
    print(f"{args.model}: {len(schemes)} schemes into {out}", flush=True)
    with AccuracyDB(args.db or default_db_path(args.model)) as db:
        manifest = build_bank(args.model, out, schemes, db, cfg, progress=not args.no_progress, engine=engine,
                              ray_address=args.ray_address)
    size = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    wanted = set(schemes)
    rows = [{"scheme": str(e.scheme), "top1_error": e.top1_error, "accuracy_loss": e.accuracy_loss}
            for e in manifest.schemes if e.scheme in wanted]
    if args.json:
        print(json.dumps({"model": args.model, "out": str(out), "recipe": manifest.recipe, "schemes": rows,
                          "bank_schemes": len(manifest.schemes), "bytes": size,
                          "seconds": round(time.perf_counter() - t0, 1), "engine": engine.value}))
    else:
        for r in rows:
            print(f"{r['scheme']:>9}  error {r['top1_error']:.4f}  loss {r['accuracy_loss']:+.4f}")
        print(f"{len(manifest.schemes)} schemes in {out} ({size / 1e6:.2f} MB), recipe {manifest.recipe}")
    return 0
