"""`python -m bench.search`: the planner on the seed's twelve settings, against exhaustive search.

Prints a table and writes bench/results/search.md. Needs ../shared/seed/ beside the repo.
"""
from __future__ import annotations

import platform
import statistics
import sys
from pathlib import Path

from planner.accuracy_db import read_seed
from planner.latency import LatencyModel
from planner.profile import load_profile
from planner.scheme import Scheme
from planner.search import (DBEvaluator, Requirement, SearchConfig, Space, Strategy, build_candidates,
                            search)

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT.parent / "shared" / "seed"
OUT = ROOT / "bench" / "results" / "search.md"
BANDWIDTHS_MBPS = (0.5, 1.0, 2.0)
SETTINGS = (("latency ratio", 0.6), ("latency ratio", 0.7), ("accuracy loss", 0.01), ("accuracy loss", 0.05))


def main() -> int:
    if not (SEED / "vgg16_bn_stanford_cars.profile.json").is_file():
        print(f"bench.search: the seed scenario is absent at {SEED}", file=sys.stderr)
        return 2
    import sklearn.gaussian_process  # noqa: F401  (import once, outside the timed searches)
    prof = load_profile(SEED / "vgg16_bn_stanford_cars.profile.json")
    tables = {"latency": read_seed(SEED / "latency_search.txt"),
              "accuracy": read_seed(SEED / "accuracy_search.txt")}
    config = SearchConfig(seed=0)
    rows = []
    for bw in BANDWIDTHS_MBPS:
        m = LatencyModel.from_profile(prof, bw)
        for kind, v in SETTINGS:
            name = "latency" if kind.startswith("latency") else "accuracy"
            table = tables[name]
            cands = build_candidates(m, Space.DB, table)
            req = (Requirement.latency_ratio(v, m.best_single_end()[1]) if name == "latency"
                   else Requirement.accuracy_loss(v))
            ex = search(m, cands, req, DBEvaluator(table, prof.base_top1_error), strategy=Strategy.EXHAUSTIVE)
            got = search(m, cands, req, DBEvaluator(table, prof.base_top1_error), config)
            rnd = search(m, cands, req, DBEvaluator(table, prof.base_top1_error),
                         SearchConfig(seed=0, random_budget=got.evaluations), Strategy.RANDOM)
            rows.append((bw, kind, v, f"{name}_search.txt", got, ex, rnd))
    evals = [r[4].evaluations for r in rows]
    lines = [
        "# Search on the seed scenario (VGG-16-BN / Stanford Cars, `--space db`)",
        "",
        f"Command: `python -m bench.search` (search seed {config.seed}, noise margin "
        f"{config.noise_margin}); machine: {platform.node()} ({platform.machine()}, "
        f"Python {platform.python_version()}), shared 2-core CPU.",
        "Latency model: SI units (bytes*8/(Mbps*1e6)), no entropy coding, no RTT. Evaluations are "
        "accuracy look-ups; exhaustive evaluates every candidate that meets the latency bound. "
        "Random = random search with the planner's evaluation budget. Wall time is in-process, "
        "after importing scikit-learn once (about 1-3 s on this machine, paid once per process).",
        "",
        "| Mbps | requirement | database | scheme | latency s | loss | evals | exhaustive evals | "
        "= exhaustive optimum | random (same budget) | wall s |",
        "|---:|---|---|---|---:|---:|---:|---:|:---:|---|---:|",
    ]
    for bw, kind, v, db, got, ex, rnd in rows:
        same = (got.scheme, got.latency_s, got.top1_error) == (ex.scheme, ex.latency_s, ex.top1_error)
        lines.append(
            f"| {bw:g} | {kind} {v:g} | {db} | {got.scheme} | {got.latency_s:.4f} | {got.accuracy_loss:+.3f} | "
            f"{got.evaluations} | {ex.evaluations} | {'yes' if same else 'NO'} | "
            f"{rnd.scheme}{'' if rnd.scheme == ex.scheme else ' (worse)'} | {got.wall_s:.2f} |")
    walls = [r[4].wall_s for r in rows]
    m05 = LatencyModel.from_profile(prof, 0.5)
    (fail_case,) = [r[4] for r in rows if r[0] == 0.5 and r[2] == 0.05]
    lines += [
        "",
        f"Evaluations: median {statistics.median(evals):g}, max {max(evals)} (issue 4 targets median <= 20, "
        f"none above 40: **not met**). Wall time: median {statistics.median(walls):.2f} s, "
        f"max {max(walls):.2f} s.",
        "",
        "Research code's documented failure case, 0.5 Mbps / accuracy loss 0.05: it returned 2:1:4 "
        f"(here {m05.latency_s(Scheme.parse('2:1:4')):.4f} s) although its database holds 0:1:5 "
        f"({m05.latency_s(Scheme.parse('0:1:5')):.4f} s; the seed quotes ~0.67 s and ~0.60 s in its "
        f"MiB-based units). This planner returns {fail_case.scheme} at {fail_case.latency_s:.4f} s, "
        f"loss {fail_case.accuracy_loss:+.3f}, after {fail_case.evaluations} look-ups.",
        "",
        "Why the evaluation target is not met:",
        "- Latency requirements: the search stops only when no unevaluated candidate can beat the "
        "incumbent, and bounds only relate schemes of one partition. A scheme that no other "
        "latency-feasible scheme of its partition dominates has no bound at all, so every such "
        "maximal scheme must be looked up: 35, 38, 27, 33, 17 and 20 of them at the six latency "
        "settings (in table order). The planner spends 0 to 8 more (tie checks: a faster scheme that could equal the incumbent stays open; and the noise margin).",
        "- Accuracy requirements: the optima sit within 0.001 of the bound (0.160 against 0.161 at "
        "loss 0.01), and every faster scheme must be shown to miss it; with hindsight a cover needs "
        "about 18, 6, 11, 3, 9 and 3 look-ups.",
        "- The seed data break monotonicity (432 dominated pairs in accuracy_search.txt are "
        "inverted, by up to 0.08; e.g. 1:8:8 = 0.162 dominates the 0.01 optimum 1:5:7 = 0.160). "
        "With strict bounds the 0.5 Mbps / 0.01 optimum is pruned; a margin of 0.002 (the "
        "repeat-evaluation noise the seed README documents) keeps all twelve exact at the cost "
        "of a few look-ups.",
    ]
    text = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
