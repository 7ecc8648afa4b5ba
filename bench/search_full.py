"""`python -m bench.search_full`: `--space full` on fmnist-vgg with real evaluations.

Profiles fmnist-vgg here (this machine plays both ends), scales the device side to a given
time for the whole network (a Raspberry-Pi-class device against this machine as the cloud), searches every P:C:B under
an accuracy-loss bound, looking up what a copy of the shipped accuracy database holds for the
fine-tune recipe and fine-tuning and testing what it lacks, then evaluates the chosen scheme
again independently (another fine-tune seed, a fresh database file). Writes
bench/results/search_full.md with what this run measured.

Slow: each new evaluation fine-tunes and tests the network (about a minute or two on one
core at the defaults); --quick runs the same steps on small subsets in a minute or two.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine

MODEL = "fmnist-vgg"
OUT = Path(__file__).resolve().parent / "results" / "search_full.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.search_full", description=__doc__.splitlines()[0])
    p.add_argument("--bandwidth-mbps", type=float, default=0.1, help="uplink (default %(default)s)")
    p.add_argument("--accuracy-loss", type=float, default=0.01, help="loss bound (default %(default)s)")
    p.add_argument("--device-full-model-s", type=float, default=0.1,
                   help="the device's seconds for the whole network: this machine's head times are "
                        "scaled to it, a Raspberry-Pi-class device (default %(default)s)")
    p.add_argument("--finetune-epochs", type=float, default=0.1,
                   help="per new evaluation; 0.1 is the shipped database's recipe (default %(default)s)")
    p.add_argument("--max-evaluations", type=int, default=6, help="search budget (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="search and fine-tune seed (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 256 training / 200 test images, 2 evaluations, no shipped rows")
    p.add_argument("--out", type=Path, default=OUT, help="markdown to write (default %(default)s)")
    return p.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> list[str]:
    import torch

    from planner.accuracy_db import BASE_SCHEME, AccuracyDB
    from planner.evaluate import default_db_path, ensure_base_record, evaluate, recipe_name
    from planner.latency import LatencyModel
    from planner.profile import MeasureConfig, measure_profile
    from planner.scheme import CLOUD_ONLY, DEVICE_ONLY, Scheme
    from planner.requirement import RequirementKind, RequirementSpec
    from planner.search import FullSpaceEvaluator, SearchConfig, Space, build_candidates, search

    torch.set_num_threads(args.threads)
    train_limit, test_limit = (256, 200) if args.quick else (None, None)
    max_evals = 2 if args.quick else args.max_evaluations
    recipe = recipe_name(args.finetune_epochs, args.seed, train_limit, test_limit)

    t0 = time.perf_counter()
    prof = measure_profile(MODEL, MeasureConfig(threads=args.threads))
    k = args.device_full_model_s / prof.device_full_model_s
    prof = dataclasses.replace(
        prof, device_full_model_s=prof.device_full_model_s * k,
        partitions=tuple(dataclasses.replace(q, device_head_s=q.device_head_s * k) for q in prof.partitions))
    profile_s = time.perf_counter() - t0

    db_path = work / "search.sqlite"
    shipped = default_db_path(MODEL)
    if not args.quick and shipped.is_file():   # a byte copy: the shipped file is never opened
        for suffix in ("", "-wal"):
            if Path(f"{shipped}{suffix}").is_file():
                shutil.copyfile(f"{shipped}{suffix}", f"{db_path}{suffix}")
    with AccuracyDB(db_path) as db:
        base = ensure_base_record(MODEL, db, test_limit, progress=False)
        known = {Scheme.parse(r.scheme): r.top1_error for r in db.records(MODEL, base.dataset)
                 if r.recipe == recipe and r.scheme != BASE_SCHEME}
        lat = LatencyModel.from_profile(prof, args.bandwidth_mbps)
        cands = build_candidates(lat, Space.FULL, known)
        def evaluate_fn(model, scheme, epochs, db, seed, train_limit=None, test_limit=None):
            return evaluate(model, scheme, epochs, db, seed, train_limit, test_limit, work / "artifacts",
                            progress=False).record
        ev = FullSpaceEvaluator(known, base.top1_error, MODEL, db, args.finetune_epochs, args.seed,
                                evaluate_fn, train_limit=train_limit, test_limit=test_limit)
        result = search(lat, cands, RequirementSpec(RequirementKind.MAX_ACCURACY_LOSS, args.accuracy_loss).build(lat), ev,
                        SearchConfig(seed=args.seed, max_evaluations=max_evals))
        rows = {r.scheme: r for r in db.records(MODEL, base.dataset) if r.recipe == recipe}
    reeval = None
    if result.scheme is not None and result.scheme.is_split:
        with AccuracyDB(work / "reeval.sqlite") as db2:
            reeval = evaluate(MODEL, result.scheme, args.finetune_epochs, db2, args.seed + 1, train_limit,
                              test_limit, work / "artifacts", progress=False)
    return render(args, prof, lat, cands, known, result, rows, reeval, base, recipe, profile_s, k,
                  (train_limit, test_limit, max_evals), lat.latency_s(DEVICE_ONLY), lat.latency_s(CLOUD_ONLY))


def render(args, prof, lat, cands, known, result, rows, reeval, base, recipe, profile_s, slowdown, limits,
           device_only_s, cloud_only_s) -> list[str]:
    train_limit, test_limit, max_evals = limits
    cmd = "python -m bench.search_full" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    images = (f"{train_limit} training / {test_limit} test images" if args.quick
              else "the full training split (x the epochs) and the full 10,000-image test split")
    new = [(s, e) for s, e in result.evaluated if s not in {str(x) for x in known}]
    lines = [
        f"# `--space full` on {MODEL} with real evaluations{' (quick smoke run)' if args.quick else ''}",
        "",
        f"- command: `{cmd}`",
        f"- machine: {platform.node()}, {machine()}, torch threads {args.threads}; load average "
        f"{os.getloadavg()[0]:.1f} at the end (a shared machine: times vary with it)",
        f"- profile: measured here in {profile_s:.1f} s (both ends); the device side scaled x{slowdown:.1f} to "
        f"{args.device_full_model_s:g} s for the whole network: device-only {device_only_s:.4f} s, cloud-only "
        f"{cloud_only_s:.4f} s at {args.bandwidth_mbps:g} Mbps",
        f"- accuracy database: "
        + ("a fresh file" if args.quick else "a copy of the shipped planner/db/fmnist-vgg.sqlite")
        + f", recipe {recipe}: {len(known)} schemes recorded; base error {base.top1_error:.4f}",
        f"- space: every P:C:B, {len(cands):,} schemes; requirement {result.requirement.text}; "
        f"new evaluations fine-tune {args.finetune_epochs:g} epochs on {images}",
        "",
        "## Result",
        "",
        "| | |",
        "|---|---|",
        f"| chosen scheme | **{result.scheme}** |",
        f"| predicted latency | {result.latency_s:.4f} s |" if result.latency_s is not None else "| predicted latency | - |",
        f"| top-1 error / accuracy loss | {result.top1_error:.4f} / {result.accuracy_loss:+.4f} |"
        if result.top1_error is not None else "| top-1 error / accuracy loss | - |",
        f"| evaluations | {result.evaluations} of at most {max_evals}: {len(new)} new "
        f"({', '.join(f'{s} {e:.4f}' for s, e in new) or 'none'}), {result.evaluations - len(new)} look-ups |",
        f"| seconds per new evaluation | "
        + (", ".join(f"{rows[s].seconds:.0f}" for s, _ in new if s in rows) or "-") + " |",
        f"| stop | {result.stop.value}; proven optimal: {'yes' if result.proven else 'no'} "
        f"({result.unproven_candidates:,} schemes not evaluated could beat it) |",
        f"| search wall time | {result.wall_s:.0f} s |",
        "",
    ]
    if reeval is not None:
        ok = reeval.accuracy_loss <= args.accuracy_loss
        lines += [
            "## Independent re-evaluation",
            "",
            f"{result.scheme} fine-tuned again with seed {args.seed + 1} into a fresh database file (its own "
            f"base row: {reeval.base_error:.4f}): top-1 error **{reeval.record.top1_error:.4f}**, accuracy loss "
            f"{reeval.accuracy_loss:+.4f}: {'meets' if ok else 'does not meet'} the {args.accuracy_loss:g} bound. "
            f"{reeval.record.seconds:.0f} s ({reeval.finetune_s:.0f} s fine-tune, {reeval.test_s:.0f} s test).",
        ]
    else:
        lines += ["No re-evaluation: the chosen scheme runs on one end only (the unmodified network)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="search-full-") as work:
        lines = run(args, Path(work))
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
