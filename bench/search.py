"""`python -m bench.search`: the planner on the seed's twelve settings, against exhaustive search.

Prints a table and writes bench/results/search.md. Needs ../shared/seed/ beside the repo.
"""
from __future__ import annotations

import os
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
ROBUST_SEEDS = (0, 1, 2, 3, 4)
SETTINGS = (("latency ratio", 0.6), ("latency ratio", 0.7), ("accuracy loss", 0.01), ("accuracy loss", 0.05))


NOTES = [
    "",
    "## How the default stops, and why these settings",
    "",
    "- Stop (`SearchConfig.confidence` 0.95, `--confidence`): after `min_evaluations` (10, about "
    "3 per GP input dimension) the search stops once the candidates the bounds leave open have, "
    "summed, GP probability < 0.05 of beating the incumbent (latency mode: error below the "
    "incumbent's, +-`tie_tolerance` 0.0005 = half the recorded 0.001 resolution, widened for "
    "faster candidates that win ties; accuracy mode: error within the bound, for the faster "
    "schemes). The sum is a union bound, so 0.95 reads as P(result optimal) >= 0.95 under the GP. "
    "A per-candidate max instead of the sum stopped too early on the swapped databases.",
    "- GP (scikit-learn GaussianProcessRegressor): Constant x Matern(nu=0.5) + WhiteKernel on "
    "log(error), anisotropic length scales refitted at 2, 4, 8... points. nu=0.5 because the "
    "recorded surface is rough (neighbouring schemes differ by up to 0.01 in both directions, "
    "432 inverted dominance pairs); smoother kernels (1.5, 2.5) were overconfident and missed "
    "2-5 of the 24 settings. Bits enter as the quantisation step 2^(1-B) (error follows the "
    "step, which halves per bit and saturates), not linearly.",
    "- Optimistic prior: targets are scaled by hand (normalize_y off) so that the prior mean is "
    "the best error seen, not the mean. With the mean prior, seeds 1 and 2 reproduced the "
    "research code's failure (2:1:4 at 0.5 Mbps / loss 0.05): the search samples many bad "
    "cheap schemes, and the GP then called unexplored regions hopeless.",
    "- Acquisition: probability of beating the incumbent x (1 + candidates the result would close "
    "by the bounds), so look-ups go where the stop is decided; `--prove` keeps the closure score alone.",
    "- Limits: a lone good scheme in a region the GP has seen as uniformly bad can be missed "
    "(tests/test_search.py keeps such a needle case on `--prove`); the seed data's noise-level "
    "optima (e.g. 1:10:5 = 0.157 beside 1:9:6 = 0.162 and 1:11:4 = 0.170) are missed on the "
    "swapped databases, where even `--prove` misses two with its 0.002 margin.",
]


def main() -> int:
    if not (SEED / "vgg16_bn_stanford_cars.profile.json").is_file():
        print(f"bench.search: the seed scenario is absent at {SEED}", file=sys.stderr)
        return 2
    import sklearn.gaussian_process  # noqa: F401  (import once, outside the timed searches)
    prof = load_profile(SEED / "vgg16_bn_stanford_cars.profile.json")
    tables = {"latency": read_seed(SEED / "latency_search.txt"),
              "accuracy": read_seed(SEED / "accuracy_search.txt")}
    config = SearchConfig(seed=0)
    base = prof.base_top1_error

    def setting(bw, kind, v, name):
        m = LatencyModel.from_profile(prof, bw)
        table = tables[name]
        req = (Requirement.latency_ratio(v, m.best_single_end()[1]) if kind.startswith("latency")
               else Requirement.accuracy_loss(v))
        cands = build_candidates(m, Space.DB, table)
        ex = search(m, cands, req, DBEvaluator(table, base), strategy=Strategy.EXHAUSTIVE)
        return m, cands, req, table, ex

    def same(a, b):
        return (a.scheme, a.latency_s, a.top1_error) == (b.scheme, b.latency_s, b.top1_error)

    rows = []
    for bw in BANDWIDTHS_MBPS:
        for kind, v in SETTINGS:
            name = "latency" if kind.startswith("latency") else "accuracy"
            m, cands, req, table, ex = setting(bw, kind, v, name)
            got = search(m, cands, req, DBEvaluator(table, base), config)
            proof = search(m, cands, req, DBEvaluator(table, base), SearchConfig(seed=0, prove=True))
            rnd = search(m, cands, req, DBEvaluator(table, base),
                         SearchConfig(seed=0, random_budget=got.evaluations), Strategy.RANDOM)
            rows.append((bw, kind, v, f"{name}_search.txt", got, proof, ex, rnd))
    # robustness: other seeds on the same settings, and the databases swapped
    robust = []
    for label, swap in (("seed's pairs", False), ("databases swapped", True)):
        for seed in ROBUST_SEEDS:
            for prove in (False, True):
                if prove and seed != 0:
                    continue
                ev, ok, misses = [], 0, []
                for bw in BANDWIDTHS_MBPS:
                    for kind, v in SETTINGS:
                        name = "latency" if kind.startswith("latency") else "accuracy"
                        if swap:
                            name = "accuracy" if name == "latency" else "latency"
                        m, cands, req, table, ex = setting(bw, kind, v, name)
                        got = search(m, cands, req, DBEvaluator(table, base), SearchConfig(seed=seed, prove=prove))
                        ev.append(got.evaluations)
                        if same(got, ex):
                            ok += 1
                        else:
                            misses.append(f"{bw:g} Mbps {kind} {v:g}: {got.scheme} ({got.top1_error:.3f}, "
                                          f"{got.latency_s:.3f} s) vs {ex.scheme} ({ex.top1_error:.3f}, "
                                          f"{ex.latency_s:.3f} s)")
                robust.append((label, seed, "prove" if prove else "GP stop", ok, ev, misses))
    evals = [r[4].evaluations for r in rows]
    pevals = [r[5].evaluations for r in rows]
    lines = [
        "# Search on the seed scenario (VGG-16-BN / Stanford Cars, `--space db`)",
        "",
        f"Command: `python -m bench.search` (search seed {config.seed}, noise margin "
        f"{config.noise_margin}, confidence {config.confidence}, min evaluations {config.min_evaluations}); "
        f"machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}), shared with a background training job "
        f"(load average {os.getloadavg()[0]:.1f} at the end: wall times are inflated accordingly; "
        f"the 2 s bound is for an idle machine).",
        "Latency model: SI units (bytes*8/(Mbps*1e6)), no entropy coding, no RTT. Evaluations are "
        "accuracy look-ups; exhaustive evaluates every candidate that meets the latency bound. "
        "Default = GP stop (`coinfer-plan search`); prove = `--prove` (stops when the monotonicity "
        "bounds, with the noise margin, leave nothing that could beat the result). Random = random "
        "search with the default's budget. Wall time is in-process, after importing scikit-learn once.",
        "",
        "| Mbps | requirement | database | scheme (default) | latency s | loss | evals default | "
        "= exhaustive | evals prove | = exhaustive | exhaustive evals | random (same budget) | wall s default / prove |",
        "|---:|---|---|---|---:|---:|---:|:---:|---:|:---:|---:|---|---:|",
    ]
    for bw, kind, v, db, got, proof, ex, rnd in rows:
        lines.append(
            f"| {bw:g} | {kind} {v:g} | {db} | {got.scheme} | {got.latency_s:.4f} | {got.accuracy_loss:+.3f} | "
            f"{got.evaluations} | {'yes' if same(got, ex) else 'NO'} | {proof.evaluations} | "
            f"{'yes' if same(proof, ex) else 'NO'} | {ex.evaluations} | "
            f"{rnd.scheme}{'' if rnd.scheme == ex.scheme else ' (worse)'} | {got.wall_s:.2f} / {proof.wall_s:.2f} |")
    walls = [r[4].wall_s for r in rows] + [r[5].wall_s for r in rows]
    m05 = LatencyModel.from_profile(prof, 0.5)
    (fail_case,) = [r[4] for r in rows if r[0] == 0.5 and r[2] == 0.05]
    met = statistics.median(evals) <= 20 and max(evals) <= 40
    lines += [
        "",
        f"Default (GP stop): median {statistics.median(evals):g}, max {max(evals)} look-ups "
        f"(issue 4 targets median <= 20, none above 40: **{'met' if met else 'not met'}**), "
        f"{sum(same(r[4], r[6]) for r in rows)}/12 exact. "
        f"Prove: median {statistics.median(pevals):g}, max {max(pevals)}, "
        f"{sum(same(r[5], r[6]) for r in rows)}/12 exact. Wall time: max {max(walls):.2f} s.",
        "",
        "Research code's documented failure case, 0.5 Mbps / accuracy loss 0.05: it returned 2:1:4 "
        f"(here {m05.latency_s(Scheme.parse('2:1:4')):.4f} s) although its database holds 0:1:5 "
        f"({m05.latency_s(Scheme.parse('0:1:5')):.4f} s). This planner returns {fail_case.scheme} at "
        f"{fail_case.latency_s:.4f} s, loss {fail_case.accuracy_loss:+.3f}, after {fail_case.evaluations} look-ups.",
        "",
        "## Robustness",
        "",
        "Same twelve settings with other `--seed` values (the seed orders candidates of equal "
        "acquisition score), and with the databases swapped (latency requirements on "
        "accuracy_search.txt, accuracy requirements on latency_search.txt).",
        "",
        "| settings | seed | stop | exact | median evals | max evals | misses (got vs exhaustive) |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for label, seed, stop, ok, ev, misses in robust:
        lines.append(f"| {label} | {seed} | {stop} | {ok}/12 | {statistics.median(ev):g} | {max(ev)} | "
                     f"{'; '.join(misses) or '-'} |")
    lines += NOTES
    text = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
