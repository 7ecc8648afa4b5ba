"""`coinfer-plan db import|export|list`: the accuracy database and the seed's text format."""
from __future__ import annotations

import argparse
import json
import sys

from planner.accuracy_db import (SEED_RECIPE, AccuracyDB, AccuracyDBError, export_seed, import_seed)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="accuracy database: import/export the seed P+C-B*E format, list rows")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")

    imp = dbsub.add_parser("import", help="import a seed P+C-B*E file (the last occurrence of a scheme wins)")
    imp.add_argument("file", help="seed text file")
    imp.add_argument("--db", required=True, metavar="FILE", help="SQLite database (created if absent)")
    imp.add_argument("--model", required=True, help="model name, e.g. vgg16_bn")
    imp.add_argument("--dataset", required=True, help="dataset name, e.g. stanford_cars")
    imp.add_argument("--base-error", required=True, type=float, help="unmodified model's top-1 error")
    imp.add_argument("--recipe", default=SEED_RECIPE, help=f"recipe name (default {SEED_RECIPE})")
    imp.add_argument("--test-size", type=int, default=0, help="test-set images (default 0: unknown)")
    imp.set_defaults(func=run_import)

    exp = dbsub.add_parser("export", help="write the newest row per scheme as P+C-B*E")
    exp.add_argument("file", help="text file to write")
    exp.add_argument("--db", required=True, metavar="FILE")
    exp.add_argument("--model", required=True)
    exp.add_argument("--dataset", required=True)
    exp.add_argument("--recipe", default=None, help="only this recipe (default: newest of any)")
    exp.set_defaults(func=run_export)

    ls = dbsub.add_parser("list", help="list rows")
    ls.add_argument("--db", required=True, metavar="FILE")
    ls.add_argument("--model", default=None)
    ls.add_argument("--dataset", default=None)
    ls.add_argument("--json", action="store_true", help="last line: one JSON object with the rows")
    ls.set_defaults(func=run_list)


def _fail(msg: str) -> int:
    print(f"coinfer-plan db: {msg}", file=sys.stderr)
    return 2


def run_import(args: argparse.Namespace) -> int:
    try:
        with AccuracyDB(args.db) as db:
            n = import_seed(db, args.file, args.model, args.dataset, args.base_error, args.recipe,
                            test_size=args.test_size)
    except (AccuracyDBError, OSError) as e:
        return _fail(str(e))
    print(f"imported {n} schemes from {args.file} into {args.db} "
          f"({args.model}/{args.dataset}, recipe {args.recipe}, base error {args.base_error:g})")
    return 0


def run_export(args: argparse.Namespace) -> int:
    try:
        with AccuracyDB(args.db) as db:
            n = export_seed(db, args.file, args.model, args.dataset, args.recipe)
    except (AccuracyDBError, OSError) as e:
        return _fail(str(e))
    print(f"exported {n} schemes to {args.file}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        with AccuracyDB(args.db) as db:
            recs = db.records(args.model, args.dataset)
    except (AccuracyDBError, OSError) as e:
        return _fail(str(e))
    print(f"{'model':<10} {'dataset':<14} {'scheme':<11} {'recipe':<14} {'top1_error':>10} "
          f"{'test_size':>9} {'seconds':>8}  created_at")
    for r in recs:
        print(f"{r.model:<10} {r.dataset:<14} {r.scheme:<11} {r.recipe:<14} {r.top1_error:>10.4f} "
              f"{r.test_size:>9} {r.seconds:>8.1f}  {r.created_at}")
    print(f"{len(recs)} rows")
    if args.json:
        from dataclasses import asdict
        print(json.dumps({"rows": [asdict(r) for r in recs]}))
    return 0
