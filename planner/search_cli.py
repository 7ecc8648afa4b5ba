"""`coinfer-plan search` and `coinfer-plan frontier` (shared/CONTRACTS.md): thin adapters."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from planner.accuracy_db import AccuracyDB, AccuracyDBError, is_seed_text, load_view
from planner.latency import Cost, LatencyModel, LatencyModelError
from planner.profile import ProfileError, load_profile
from planner.requirement import RequirementSpec
from planner.search import (DBEvaluator, FullSpaceEvaluator, SearchConfig, SearchError,
                            SearchResult, Space, Stop, Strategy, build_candidates, search)

EXIT_INFEASIBLE = 3   # no scheme meets the requirement (contract)
EXIT_BAD_INPUT = 2    # a file or argument that cannot be used


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="pick the scheme for a requirement (Opt-CoInfer search)",
                       description="Pick the most accurate scheme under a latency requirement, or the "
                                   "fastest under an accuracy-loss requirement.")
    _common(p)
    p.add_argument("--space", required=True, choices=[s.value for s in Space],
                   help="db: recorded schemes only; full: every P:C:B, evaluating what is missing")
    req = p.add_mutually_exclusive_group(required=True)
    req.add_argument("--latency-ratio", type=float, metavar="R", help="latency <= R x best single-end latency")
    req.add_argument("--latency-s", type=float, metavar="S", help="latency <= S seconds")
    req.add_argument("--accuracy-loss", type=float, metavar="A", help="top-1 accuracy loss <= A (fraction)")
    p.add_argument("--objective", choices=[c.value for c in Cost], default=Cost.LATENCY.value,
                   help="latency (default): a frame's seconds; throughput: the frame period of a stream with "
                        "--pipeline-depth frames in flight (its slowest stage), which the latency bounds bound")
    p.add_argument("--pipeline-depth", type=int, default=1, metavar="K",
                   help="frames in flight for --objective throughput (default 1: period = latency)")
    p.add_argument("--seed", type=int, default=0, help="GP / random-search seed (default 0)")
    p.add_argument("--strategy", choices=[s.value for s in Strategy], default=Strategy.BAYES.value,
                   help="bayes (default), or the exhaustive / random baselines")
    p.add_argument("--prove", action="store_true",
                   help="stop only when every scheme that could beat the result was evaluated: exact on "
                        "any database (the bounds close nothing; latency mode looks up every scheme "
                        "within the latency bound); default: stop on the GP's confidence")
    p.add_argument("--noise-margin", type=float, default=SearchConfig.noise_margin, metavar="E",
                   help="without --prove: the bounds close a scheme slower than the incumbent when it "
                        "could beat it only with an error more than E below an evaluated scheme that "
                        "dominates it (default %(default)s)")
    p.add_argument("--violation-sd", type=float, default=SearchConfig.violation_sd, metavar="S",
                   help="without --prove: sd of how far an error may fall below such a bound; weighs "
                        "the faster schemes, which are never closed (default %(default)s)")
    p.add_argument("--confidence", type=float, default=SearchConfig.confidence, metavar="Q",
                   help="without --prove: stop once the GP gives the open candidates together a "
                        "probability below 1-Q of beating the result (default %(default)s)")
    p.add_argument("--finetune-epochs", type=float, default=0.25,
                   help="--space full: fine-tune epochs per new evaluation (default 0.25)")
    p.add_argument("--max-evaluations", type=int, default=None, metavar="N",
                   help="stop after N evaluations with the best scheme found (not proven optimal)")
    p.add_argument("--train-limit", type=int, default=None, metavar="N",
                   help="--space full: fine-tune new evaluations on the first N training images")
    p.add_argument("--test-limit", type=int, default=None, metavar="N",
                   help="--space full: test new evaluations on the first N test images")
    p.add_argument("--record-db", metavar="FILE",
                   help="--space full: SQLite file new evaluations are recorded in "
                        "(default: the first SQLite --db)")
    p.set_defaults(func=run_search)

    f = sub.add_parser("frontier", help="latency/accuracy Pareto frontier of recorded schemes, with a PNG")
    _common(f)
    f.add_argument("--png", metavar="FILE", help="plot path (default frontier-MODEL-XMbps.png)")
    f.set_defaults(func=run_frontier)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, metavar="FILE", help="latency profile JSON (seed or project format)")
    p.add_argument("--db", required=True, action="append", metavar="FILE",
                   help="accuracy database: seed P+C-B*E text or SQLite; repeatable, later wins")
    p.add_argument("--bandwidth-mbps", required=True, type=float, metavar="X", help="uplink, 10^6 bit/s")
    p.add_argument("--rtt-s", type=float, default=None, metavar="S",
                   help="round-trip time added per message (default: the profile's, else 0)")
    p.add_argument("--model", default=None, help="model name in the databases (default: the profile's)")
    p.add_argument("--dataset", default=None, help="dataset name in the databases (default: the profile's)")
    p.add_argument("--recipe", metavar="PREFIX",
                   help="SQLite rows of this fine-tune recipe (e.g. ft0.1-, ft0-); needed when a file holds several")
    p.add_argument("--json", action="store_true", help="last line of stdout is one JSON object")


def _fail(cmd: str, msg: str, code: int) -> int:
    print(f"coinfer-plan {cmd}: {msg}", file=sys.stderr)
    return code


def _load(args):
    profile = load_profile(args.profile)
    model_name = args.model or profile.model
    view = load_view(args.db, model_name, args.dataset or profile.dataset, profile.base_top1_error,
                     args.recipe)
    lat = LatencyModel.from_profile(profile, args.bandwidth_mbps, args.rtt_s,
                                    cost=Cost(getattr(args, "objective", Cost.LATENCY.value)),
                                    depth=getattr(args, "pipeline_depth", 1))
    return profile, model_name, view, lat


def run_search(args: argparse.Namespace) -> int:
    try:
        profile, model_name, view, lat = _load(args)
        space = Space(args.space)
        req = RequirementSpec.from_flags(args.latency_ratio, args.latency_s, args.accuracy_loss).build(lat)
        cands = build_candidates(lat, space, view.errors)
        db = None
        if space is Space.FULL:
            record = args.record_db or next((d for d in args.db if not is_seed_text(d)), None)
            if record is None:
                return _fail("search", "--space full needs a SQLite database to record evaluations in "
                             "(--record-db FILE or a SQLite --db)", EXIT_BAD_INPUT)
            db = AccuracyDB(record)
            evaluator = FullSpaceEvaluator(view.errors, view.base_error, model_name, db,
                                           args.finetune_epochs, args.seed,
                                           train_limit=args.train_limit, test_limit=args.test_limit)
        else:
            evaluator = DBEvaluator(view.errors, view.base_error)
        if not 0.0 < args.confidence < 1.0:
            raise SearchError(f"expected --confidence in (0, 1), got {args.confidence}")
        if args.noise_margin < 0 or args.violation_sd < 0:
            raise SearchError(f"expected --noise-margin and --violation-sd >= 0, got "
                              f"{args.noise_margin} and {args.violation_sd}")
        config = SearchConfig(seed=args.seed, noise_margin=args.noise_margin, prove=args.prove,
                              violation_sd=args.violation_sd,
                              confidence=args.confidence, max_evaluations=args.max_evaluations,
                              progress=space is Space.FULL and sys.stderr.isatty())
        result = search(lat, cands, req, evaluator, config, Strategy(args.strategy))
        if db is not None:
            db.close()
    except (ProfileError, AccuracyDBError, LatencyModelError, SearchError) as e:
        return _fail("search", str(e), EXIT_BAD_INPUT)
    print(format_result(result))
    if args.json:
        print(json.dumps(result.to_json()))
    if not result.feasible:
        return _fail("search", result.reason, EXIT_INFEASIBLE)
    return 0


def format_result(r: SearchResult) -> str:
    """A readable table of one search."""
    rows = [
        ("requirement", r.requirement.text),
        ("scheme", str(r.scheme) if r.scheme else "none (infeasible)"),
        ("predicted latency" if r.cost == "latency" else f"predicted frame period (depth {r.pipeline_depth})",
         f"{r.latency_s:.4f} s" if r.latency_s is not None else "-"),
        ("top-1 error", f"{r.top1_error:.4f}" if r.top1_error is not None else "-"),
        ("accuracy loss", f"{r.accuracy_loss:+.4f}" if r.accuracy_loss is not None else "-"),
        ("single-end", ", ".join(f"{k} {v:.4f} s" for k, v in r.single_end_s.items())
         + f" (best {r.best_single_end})"),
        ("evaluations", f"{r.evaluations} of {r.candidates} candidates ({r.strategy.value}, "
         + _STOP_NOTES[r.stop] + ")"),
        ("proof", "proven optimal: nothing left that could beat it" if r.proven else
         f"not proven: {r.unproven_candidates} schemes not evaluated could beat it"
         + ("" if r.unproven_margin is None or r.unproven_margin <= 0 else
            f" (only by falling {r.unproven_margin:.4f} below a monotonicity bound)")
         + ("" if r.miss_probability is None else f"; GP probability <= {r.miss_probability:.3f}")),
        ("search time", f"{r.wall_s:.3f} s"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


_STOP_NOTES = {
    Stop.PROOF: "stopped when nothing could beat the result",
    Stop.BOUNDS: "stopped when the bounds closed the rest; --prove for a guarantee",
    Stop.CONFIDENCE: "stopped on the GP's confidence; --prove for a guarantee",
    Stop.BUDGET: "stopped at the evaluation budget: best found",
    Stop.EXHAUSTIVE: "every scheme within the latency bound",
}


def run_frontier(args: argparse.Namespace) -> int:
    from planner.frontier import pareto_frontier, plot_frontier
    try:
        profile, model_name, view, lat = _load(args)
    except (ProfileError, AccuracyDBError, LatencyModelError) as e:
        return _fail("frontier", str(e), EXIT_BAD_INPUT)
    frontier, points = pareto_frontier(lat, view)
    png = Path(args.png or f"frontier-{model_name}-{args.bandwidth_mbps:g}Mbps.png")
    plot_frontier(frontier, points, lat, png)
    print(f"{'scheme':<12} {'latency_s':>10} {'top1_error':>10} {'loss':>8}")
    for p in frontier:
        print(f"{str(p.scheme):<12} {p.latency_s:>10.4f} {p.top1_error:>10.4f} {p.accuracy_loss:>+8.4f}")
    print(f"{len(frontier)} frontier schemes of {len(points)}; plot: {png}")
    if args.json:
        print(json.dumps({
            "frontier": [{"scheme": str(p.scheme), "predicted_latency_s": p.latency_s,
                          "top1_error": p.top1_error, "accuracy_loss": p.accuracy_loss} for p in frontier],
            "single_end_s": {str(s): t for s, t in lat.single_end().items()},
            "png": str(png)}))
    return 0
