"""The search driver: both modes, ties, bounds, proofs, dominance, determinism, CLI, and the
seed acceptance."""
from __future__ import annotations

import json
import statistics
from itertools import product

import numpy as np
import pytest

from planner.accuracy_db import AccuracyRecord, read_seed
from planner.latency import LatencyModel
from planner.profile import load_profile, save_profile
from planner.scheme import DEVICE_ONLY, Scheme
from planner.search import (DBEvaluator, FullSpaceEvaluator, Requirement, SearchConfig, Space, Stop, Strategy,
                            build_candidates, search)
from planner.search.bounds import Grid, standing
from planner.search.problem import Incumbent, Problem
from tests.planner_fixtures import SEED_PROFILE, seed_path, tiny_profile

BASE = 0.10
BW = 0.005   # Mbps: slow enough that the tiny profile's latencies spread over 0.1..1.6 s


def monotone_table(seed: int, profile) -> dict[Scheme, float]:
    """A random error table that obeys monotonicity: falls with C and B at every P."""
    rng = np.random.default_rng(seed)
    out = {}
    for part in profile.partitions:
        a, b = rng.uniform(0.2, 2.0, size=2)
        off = rng.uniform(0.0, 0.02)
        for c in range(1, part.conv_channels + 1):
            for bits in range(1, 9):
                err = BASE + off + 0.5 * np.exp(-a * c / 2) + 0.4 * np.exp(-b * bits)
                out[Scheme.split(part.index, c, bits)] = round(float(err), 3)
    return out


def run(profile, table, req_fn, bw=None, strategy=Strategy.BAYES, seed=0, space=Space.DB, **config):
    m = LatencyModel.from_profile(profile, bw or BW)
    cands = build_candidates(m, space, table)
    req = req_fn(m)
    ev = DBEvaluator(table, BASE)
    return search(m, cands, req, ev, SearchConfig(seed=seed, **config), strategy), ev


REQS = {
    "latency-0.5": lambda m: Requirement.latency_ratio(0.5, m.best_single_end()[1]),
    "latency-0.8": lambda m: Requirement.latency_ratio(0.8, m.best_single_end()[1]),
    "loss-0.01": lambda m: Requirement.accuracy_loss(0.01),
    "loss-0.05": lambda m: Requirement.accuracy_loss(0.05),
}


@pytest.mark.parametrize("prove", [True, False], ids=["prove", "gp-stop"])
@pytest.mark.parametrize("req", sorted(REQS))
@pytest.mark.parametrize("table_seed", [0, 1, 2])
def test_both_modes_find_the_exhaustive_optimum(req, table_seed, prove):
    prof = tiny_profile()
    table = monotone_table(table_seed, prof)
    ex, ex_ev = run(prof, table, REQS[req], strategy=Strategy.EXHAUSTIVE)
    got, ev = run(prof, table, REQS[req], prove=prove)
    assert got.scheme == ex.scheme and got.latency_s == ex.latency_s and got.top1_error == ex.top1_error
    assert got.evaluations == ev.evaluations <= ex_ev.evaluations
    if prove:   # a proof looks up every feasible scheme in latency mode, fewer in accuracy mode
        assert got.proven and got.unproven_candidates == 0 and got.unproven_margin is None
        assert got.evaluations < ex_ev.evaluations or not req.startswith("loss")
    else:
        assert got.evaluations < ex_ev.evaluations
    # every scheme it evaluated met the latency requirement
    lat = LatencyModel.from_profile(prof, BW)
    assert ev.log and all(lat.latency_s(s) <= got.requirement.max_latency_s for s in ev.log)


def test_latency_mode_never_evaluates_a_scheme_that_is_too_slow():
    prof = tiny_profile()
    got, ev = run(prof, monotone_table(3, prof), REQS["latency-0.5"])
    assert ev.log and max(LatencyModel.from_profile(prof, BW).latency_s(s) for s in ev.log) \
        <= got.requirement.max_latency_s


def test_single_end_wins_when_nothing_split_is_accurate_enough():
    prof = tiny_profile()
    table = {s: 0.5 for s in monotone_table(0, prof)}
    got, _ = run(prof, table, REQS["loss-0.01"])
    assert got.scheme == DEVICE_ONLY and got.accuracy_loss == 0.0


def test_infeasible_latency_and_loss():
    prof = tiny_profile()
    table = monotone_table(0, prof)
    got, ev = run(prof, table, lambda m: Requirement.latency_s(1e-4))
    assert got.scheme is None and ev.evaluations == 0 and "fastest scheme takes" in got.reason
    got, _ = run(prof, table, lambda m: Requirement.accuracy_loss(-0.5))
    assert got.scheme is None and "best achievable accuracy loss" in got.reason


def test_ties_latency_mode_prefers_faster():
    prof = tiny_profile()
    # equal best error at 0:2:1 (faster) and 1:4:8 (slower); everything else worse
    table = {s: 0.3 for s in monotone_table(0, prof)}
    table[Scheme.parse("0:2:1")] = 0.12
    table[Scheme.parse("1:4:8")] = 0.12
    for s in list(table):   # keep it monotone: what dominates them is at least as good
        if (s.partition == 0 and s.channels >= 2) or (s.partition == 1 and s.channels >= 4 and s.bits == 8):
            table[s] = 0.12
    m = LatencyModel.from_profile(prof, BW)
    req = Requirement.latency_s(0.9)   # device-only (1 s, error 0.10) is too slow
    for strategy in (Strategy.BAYES, Strategy.EXHAUSTIVE):
        got = search(m, build_candidates(m, Space.DB, table), req, DBEvaluator(table, BASE),
                     strategy=strategy)
        assert got.scheme == Scheme.parse("0:2:1") and got.top1_error == 0.12, strategy


def test_ties_accuracy_mode_prefers_more_accurate():
    prof = tiny_profile()
    # 0:2:4 and 0:4:2 and 0:8:1 have the same latency; the most accurate of them must win
    table = {Scheme.parse("0:2:4"): 0.105, Scheme.parse("0:4:2"): 0.103, Scheme.parse("0:8:1"): 0.104,
             Scheme.parse("0:8:8"): 0.101}
    m = LatencyModel.from_profile(prof, BW)
    assert len({m.latency_s(s) for s in list(table)[:3]}) == 1
    for strategy in (Strategy.BAYES, Strategy.EXHAUSTIVE):
        got = search(m, build_candidates(m, Space.DB, table), Requirement.accuracy_loss(0.01),
                     DBEvaluator(table, BASE), strategy=strategy)
        assert got.scheme == Scheme.parse("0:4:2"), strategy


def test_monotonicity_bounds_on_the_grid():
    prof = tiny_profile()
    table = monotone_table(0, prof)
    m = LatencyModel.from_profile(prof, BW)
    cands = build_candidates(m, Space.DB, table)
    grid = Grid(cands)
    i = next(k for k in range(len(cands)) if cands.scheme(k) == Scheme.parse("1:4:4"))
    lb = grid.lower_bounds(np.array([i]), np.array([0.3]))
    ub = grid.upper_bounds(np.array([i]), np.array([0.3]))
    at = {str(cands.scheme(k)): (lb[k], ub[k]) for k in range(len(cands))}
    assert at["1:2:3"] == (0.3, np.inf)        # dominated: error at least 0.3
    assert at["1:8:8"] == (-np.inf, 0.3)       # dominating: error at most 0.3
    assert at["1:2:8"] == (-np.inf, np.inf)    # incomparable
    assert at["0:2:3"] == (-np.inf, np.inf)    # another partition


def test_bounds_close_only_schemes_slower_than_the_incumbent():
    # latency mode, incumbent 1:8:8 at 0.12; 1:16:8 looked up at 0.30 bounds everything at P=1
    # from below: the slower schemes it bounds are closed, the faster ones never are
    prof = tiny_profile()
    table = monotone_table(0, prof)
    m = LatencyModel.from_profile(prof, BW)
    cands = build_candidates(m, Space.DB, table)
    prob = Problem(m, cands, Requirement.latency_s(10.0), BASE)
    at = {str(cands.scheme(k)): k for k in range(len(cands))}
    inc = prob.offer(Incumbent(), at["1:8:8"], 0.12)
    done = np.array([at["1:8:8"], at["1:16:8"]])
    st = standing(prob, inc, done, np.array([0.12, 0.30]), Grid(cands), close_margin=0.002)
    lat = cands.latency_s
    assert st.contender[at["1:12:8"]] and st.closed[at["1:12:8"]]        # slower, bound 0.30
    assert lat[at["1:4:4"]] < inc.latency_s and not st.closed[at["1:4:4"]]  # faster: stays open
    assert not st.contender[at["1:16:8"]] and not st.contender[at["1:8:8"]]
    assert all(lat[k] > inc.latency_s for k in np.flatnonzero(st.closed))
    # a scheme with no bound (partition 0) could beat it on a monotone table: margin 0
    assert st.unproven_margin() == 0.0
    # a proof closes nothing
    proof = standing(prob, inc, done, np.array([0.12, 0.30]), Grid(cands), close_margin=None)
    assert not proof.closed.any() and proof.unproven_candidates == st.unproven_candidates


def test_unproven_margin_is_the_smallest_violation_that_could_beat_the_result():
    # accuracy mode on partition 1 only; the incumbent is 1:16:8 at 0.105 (bound 0.11 + tol)
    prof = tiny_profile()
    table = {Scheme.split(1, c, b): 0.5 for c in range(1, 17) for b in range(1, 9)}
    m = LatencyModel.from_profile(prof, BW)
    cands = build_candidates(m, Space.DB, table)
    prob = Problem(m, cands, Requirement.accuracy_loss(0.01), BASE)
    at = {str(cands.scheme(k)): k for k in range(len(cands))}
    inc = prob.offer(Incumbent(), at["1:16:8"], 0.105)
    done = [at["1:16:8"], at["1:15:8"], at["1:16:7"]]
    st = standing(prob, inc, np.array(done), np.array([0.105, 0.13, 0.12]), Grid(cands), 0.002)
    # every faster scheme is dominated by 1:15:8 (0.13) or 1:16:7 (0.12): beating the result
    # (error <= 0.11) needs a fall of at least 0.12 - 0.11 below a bound
    assert st.unproven_candidates == len(cands) - 3 and not st.closed.any()
    assert st.unproven_margin() == pytest.approx(0.12 - (BASE + 0.01), abs=1e-6)


def test_a_needle_in_a_flat_table_is_found_by_the_proof():
    # accuracy mode: only 1:16:8 (the slowest split scheme) meets the bound; nothing that
    # fails may hide it, whatever the bounds say (a lone needle is what a GP stop may miss)
    prof = tiny_profile()
    table = {Scheme.split(0, c, b): 0.5 for c in range(1, 9) for b in range(1, 9)}
    table.update({Scheme.split(1, c, b): 0.5 for c in range(1, 17) for b in range(1, 9)})
    table[Scheme.parse("1:16:8")] = 0.105
    m = LatencyModel.from_profile(prof, BW)
    ev = DBEvaluator(table, BASE)
    got = search(m, build_candidates(m, Space.DB, table), Requirement.accuracy_loss(0.01), ev,
                 SearchConfig(prove=True))
    assert got.scheme == Scheme.parse("1:16:8") and got.proven and got.stop is Stop.PROOF
    # fastest first: it looked up exactly the schemes faster than the answer, and the answer
    faster = {s for s in table if m.latency_s(s) < got.latency_s}
    assert set(ev.log) == faster | {got.scheme} and ev.log[-1] == got.scheme


def test_deterministic_under_a_seed():
    prof = tiny_profile()
    table = monotone_table(5, prof)
    a, ea = run(prof, table, REQS["loss-0.01"], seed=7)
    b, eb = run(prof, table, REQS["loss-0.01"], seed=7)
    assert ea.log == eb.log and a.scheme == b.scheme
    r1, e1 = run(prof, table, REQS["loss-0.01"], strategy=Strategy.RANDOM, seed=3)
    r2, e2 = run(prof, table, REQS["loss-0.01"], strategy=Strategy.RANDOM, seed=3)
    r3, e3 = run(prof, table, REQS["loss-0.01"], strategy=Strategy.RANDOM, seed=4)
    assert e1.log == e2.log and e1.log != e3.log


def test_full_space_evaluates_missing_schemes_and_records_them(tmp_path):
    prof = tiny_profile()
    truth = monotone_table(1, prof)
    known = dict(list(truth.items())[::7])   # a sparse database
    calls = []

    def fake_evaluate(model_name, scheme, finetune_epochs, db, seed, train_limit=None, test_limit=None):
        calls.append(scheme)
        rec = AccuracyRecord(model_name, "toy", str(scheme), f"ft{finetune_epochs:g}-seed{seed}",
                             truth[scheme], 100, 0.0)
        db.upsert(rec)
        return rec

    from planner.accuracy_db import AccuracyDB
    db = AccuracyDB(tmp_path / "full.sqlite")
    m = LatencyModel.from_profile(prof, BW)
    cands = build_candidates(m, Space.FULL, known)
    assert len(cands) == 8 * 8 + 16 * 8
    ev = FullSpaceEvaluator(known, BASE, "tiny", db, 0.25, seed=0, evaluate_fn=fake_evaluate)
    got = search(m, cands, Requirement.accuracy_loss(0.01), ev)
    ex = search(m, cands, Requirement.accuracy_loss(0.01), DBEvaluator(truth, BASE), strategy=Strategy.EXHAUSTIVE)
    assert got.scheme == ex.scheme
    assert calls and all(s not in known for s in calls) and ev.new_evaluations == len(calls)
    assert {r.scheme for r in db.records("tiny", "toy")} == {str(s) for s in calls}


# -- the command line ---------------------------------------------------------------------------
def _cli(capsys, *argv):
    from planner.__main__ import main
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_cli_search_json_and_infeasible_exit_3(capsys):
    prof, acc = seed_path(SEED_PROFILE), seed_path("accuracy_search.txt")
    rc, out, err = _cli(capsys, "search", "--profile", str(prof), "--db", str(acc), "--space", "db",
                        "--bandwidth-mbps", "0.5", "--accuracy-loss", "0.05", "--json")
    assert rc == 0, err
    obj = json.loads(out.strip().splitlines()[-1])
    assert obj["scheme"] == "0:1:5" and obj["predicted_latency_s"] == pytest.approx(0.62266)
    assert obj["accuracy_loss"] == pytest.approx(0.041) and 0 < obj["evaluations"] <= 40
    assert obj["single_end_s"]["device-only"] == 3.2571
    assert "scheme" in out and "0:1:5" in out.splitlines()[1]
    rc, out, err = _cli(capsys, "search", "--profile", str(prof), "--db", str(acc), "--space", "db",
                        "--bandwidth-mbps", "0.5", "--latency-ratio", "0.05")
    assert rc == 3
    assert len(err.strip().splitlines()) == 1 and "fastest scheme takes 0.2213 s" in err


def test_cli_reads_sqlite_with_base_row(tmp_path, capsys):
    prof, acc = seed_path(SEED_PROFILE), seed_path("accuracy_search.txt")
    db = tmp_path / "s.sqlite"
    rc, _, err = _cli(capsys, "db", "import", str(acc), "--db", str(db), "--model", "vgg16_bn",
                      "--dataset", "stanford_cars", "--base-error", "0.151")
    assert rc == 0, err
    # a profile without base_top1_error: the SQLite BASE_SCHEME row supplies it
    p = load_profile(prof)
    from dataclasses import replace
    save_profile(replace(p, base_top1_error=None), tmp_path / "p.json")
    rc, out, err = _cli(capsys, "search", "--profile", str(tmp_path / "p.json"), "--db", str(db),
                        "--space", "db", "--bandwidth-mbps", "2", "--accuracy-loss", "0.01", "--json")
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["scheme"] == "0:4:5"
    rc, out, err = _cli(capsys, "search", "--profile", str(tmp_path / "p.json"), "--db", str(acc),
                        "--space", "db", "--bandwidth-mbps", "2", "--accuracy-loss", "0.01")
    assert rc == 2 and "base error" in err


def test_cli_frontier_writes_png(tmp_path, capsys):
    prof, acc = seed_path(SEED_PROFILE), seed_path("accuracy_search.txt")
    png = tmp_path / "f.png"
    rc, out, err = _cli(capsys, "frontier", "--profile", str(prof), "--db", str(acc),
                        "--bandwidth-mbps", "1", "--png", str(png), "--json")
    assert rc == 0, err
    obj = json.loads(out.strip().splitlines()[-1])
    lat = [p["predicted_latency_s"] for p in obj["frontier"]]
    err_ = [p["top1_error"] for p in obj["frontier"]]
    assert lat == sorted(lat) and err_ == sorted(err_, reverse=True) and len(set(err_)) == len(err_)
    assert obj["frontier"][-1]["scheme"] == "cloud-only"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- acceptance on the seed scenario ---------------------------------------------------------------
SETTINGS = [(bw, kind, v) for bw in (0.5, 1.0, 2.0)
            for kind, v in (("ratio", 0.6), ("ratio", 0.7), ("loss", 0.01), ("loss", 0.05))]


def seed_setting(bw, kind, v):
    prof = load_profile(seed_path(SEED_PROFILE))
    table = read_seed(seed_path("latency_search.txt" if kind == "ratio" else "accuracy_search.txt"))
    m = LatencyModel.from_profile(prof, bw)
    req = (Requirement.latency_ratio(v, m.best_single_end()[1]) if kind == "ratio"
           else Requirement.accuracy_loss(v))
    return m, build_candidates(m, Space.DB, table), req, table, prof.base_top1_error


@pytest.fixture(scope="module")
def acceptance():
    rows = []
    for bw, kind, v in SETTINGS:
        m, cands, req, table, base = seed_setting(bw, kind, v)
        ex = search(m, cands, req, DBEvaluator(table, base), strategy=Strategy.EXHAUSTIVE)
        got = search(m, cands, req, DBEvaluator(table, base), SearchConfig(seed=0))
        proof = search(m, cands, req, DBEvaluator(table, base), SearchConfig(seed=0, prove=True))
        rows.append((bw, kind, v, got, proof, ex))
    return rows


def _same(a, b):
    return (a.scheme, a.latency_s, a.top1_error) == (b.scheme, b.latency_s, b.top1_error)


def dominators(result, m: LatencyModel, table: dict[Scheme, float]) -> list[str]:
    """Schemes the search looked up or its bounds closed that are faster than the result and at
    least as accurate (their true errors from `table`)."""
    if result.scheme is None:
        return []
    seen = [Scheme.parse(s) for s, _ in result.evaluated] + [Scheme.parse(s) for s in result.closed]
    return [str(s) for s in seen
            if m.latency_s(s) < result.latency_s and table[s] <= result.top1_error]


@pytest.mark.slow
def test_seed_acceptance_exact_optimum(acceptance):
    for bw, kind, v, got, proof, ex in acceptance:
        assert _same(got, ex), (bw, kind, v, "default")
        assert _same(proof, ex) and proof.proven, (bw, kind, v, "prove")
        assert got.evaluations < ex.evaluations and proof.evaluations <= ex.evaluations
        m, _, _, table, _ = seed_setting(bw, kind, v)
        assert not dominators(got, m, table), (bw, kind, v)
    # the research code's documented failure: at 0.5 Mbps / loss 0.05 it settled on 2:1:4
    (r,) = [g for bw, k, v, g, _, _ in acceptance if (bw, k, v) == (0.5, "loss", 0.05)]
    assert str(r.scheme) == "0:1:5" and r.latency_s == pytest.approx(0.62266)


@pytest.mark.slow
def test_seed_acceptance_evaluations_issue_target(acceptance):
    """Issue 4: median <= 20 look-ups, none above 40 (the default, GP-stopped search)."""
    evals = [got.evaluations for _, _, _, got, _, _ in acceptance]
    assert statistics.median(evals) <= 20 and max(evals) <= 40, evals


@pytest.mark.slow
def test_gp_stop_saves_look_ups_over_the_proof(acceptance):
    """The GP rule stops before the proof at most settings and never costs more overall."""
    stopped = [(got, proof) for _, _, _, got, proof, _ in acceptance if not got.proven]
    assert len(stopped) >= 6
    assert sum(g.evaluations for g, _ in stopped) < sum(p.evaluations for _, p in stopped)


def test_gp_stop_waits_for_min_evaluations_and_confidence():
    m, cands, req, table, base = seed_setting(1.0, "ratio", 0.6)
    default = search(m, cands, req, DBEvaluator(table, base), SearchConfig())
    assert default.stop is Stop.CONFIDENCE and not default.proven
    # a minimum above the default's count, or a confidence of 1, keeps it going past that point
    n = default.evaluations
    waited = search(m, cands, req, DBEvaluator(table, base), SearchConfig(min_evaluations=n + 5))
    assert waited.evaluations >= n + 5
    sure = search(m, cands, req, DBEvaluator(table, base), SearchConfig(confidence=1.0, max_evaluations=n + 5))
    assert sure.stop is Stop.BUDGET and sure.evaluations == n + 5 and not sure.proven
    for got in (waited, sure):   # the same path, further
        assert got.evaluated[:n] == default.evaluated
    # the knobs only move the stop along one path (the acquisition ignores them): a laxer
    # rule stops on a prefix of the default's look-ups, unproven
    lax = search(m, cands, req, DBEvaluator(table, base), SearchConfig(confidence=0.5, min_evaluations=5))
    assert not lax.proven and lax.stop is Stop.CONFIDENCE
    assert 5 <= lax.evaluations < default.evaluations
    assert lax.evaluated == default.evaluated[:lax.evaluations]


@pytest.mark.slow
def test_seed_acceptance_wall_time(acceptance):
    # 2 s is the target on an idle machine; the CI machine is shared, so allow slack here
    assert max(got.wall_s for _, _, _, got, _, _ in acceptance) <= 6.0


# -- every seed setting, both tables, perturbed: proofs are exact, nothing dominates a result ------
SEED_BANDWIDTHS_MBPS = (0.3, 0.5, 1.0, 1.2, 2.0, 5.0)
SEED_REQUIREMENTS = (("ratio", 0.5), ("ratio", 0.6), ("ratio", 0.7), ("loss", 0.01), ("loss", 0.05))
SEED_TABLES = ("accuracy_search.txt", "latency_search.txt", "accuracy_search.txt+noise",
               "latency_search.txt+noise")


def seed_table(name: str) -> dict[Scheme, float]:
    """A seed table, or (`+noise`) one with every error moved by up to +-0.01 (seeded):
    monotonicity broken much more often than in the recorded tables."""
    path, _, noise = name.partition("+")
    table = read_seed(seed_path(path))
    if noise:
        rng = np.random.default_rng(12)
        table = {s: round(float(np.clip(e + rng.uniform(-0.01, 0.01), 0.0, 1.0)), 3) for s, e in table.items()}
    return table


def seed_problem(table, bw, kind, v):
    prof = load_profile(seed_path(SEED_PROFILE))
    m = LatencyModel.from_profile(prof, bw)
    req = (Requirement.latency_ratio(v, m.best_single_end()[1]) if kind == "ratio"
           else Requirement.accuracy_loss(v))
    return m, build_candidates(m, Space.DB, table), req, prof.base_top1_error


@pytest.mark.parametrize("name", SEED_TABLES)
def test_prove_with_zero_margin_equals_exhaustive_on_every_setting(name):
    table = seed_table(name)
    for bw, (kind, v) in product(SEED_BANDWIDTHS_MBPS, SEED_REQUIREMENTS):
        m, cands, req, base = seed_problem(table, bw, kind, v)
        ex = search(m, cands, req, DBEvaluator(table, base), strategy=Strategy.EXHAUSTIVE)
        got = search(m, cands, req, DBEvaluator(table, base), SearchConfig(prove=True, noise_margin=0.0))
        assert _same(got, ex), (name, bw, kind, v, str(got.scheme), str(ex.scheme))
        assert got.proven and got.stop is Stop.PROOF and got.unproven_candidates == 0
        assert got.evaluations <= ex.evaluations and not got.closed
        assert not dominators(got, m, table)


def test_no_result_is_dominated_by_a_scheme_it_looked_up_or_closed():
    """GP-stopped searches cut short at 4 look-ups (much is open, some closed then) on
    settings beyond issue 4's, every table; every scheme the bounds closed is slower than the
    result. (The full GP-stopped searches of the acceptance below are checked too.)"""
    closed = 0
    for name in SEED_TABLES:
        table = seed_table(name)
        for bw, (kind, v) in product((0.3, 1.2, 5.0), SEED_REQUIREMENTS):
            m, cands, req, base = seed_problem(table, bw, kind, v)
            got = search(m, cands, req, DBEvaluator(table, base), SearchConfig(max_evaluations=4))
            assert got.evaluations <= 4
            assert not dominators(got, m, table), (name, bw, kind, v, str(got.scheme))
            if got.scheme is not None:
                assert all(m.latency_s(Scheme.parse(s)) > got.latency_s for s in got.closed)
            assert got.proven == (got.unproven_candidates == 0) == (got.unproven_margin is None)
            closed += len(got.closed)
    assert closed > 0   # the bounds did close schemes: the checks above are not vacuous


def test_reported_case_1_2_mbps_latency_ratio_0_5():
    # the database holds 1:4:6 (0.161, 0.764 s) beside 1:4:7 (0.165) and 1:4:8 (0.162, 0.847 s):
    # 1:4:7's bound once pruned 1:4:6, and even --prove --noise-margin 0 returned 1:4:8
    table = seed_table("latency_search.txt")
    m, cands, req, base = seed_problem(table, 1.2, "ratio", 0.5)
    for cfg in (SearchConfig(prove=True, noise_margin=0.0), SearchConfig(prove=True)):
        got = search(m, cands, req, DBEvaluator(table, base), cfg)
        assert str(got.scheme) == "1:4:6" and got.top1_error == 0.161 and got.proven
    got = search(m, cands, req, DBEvaluator(table, base), SearchConfig())
    assert not dominators(got, m, table) and "1:4:6" not in got.closed
    if str(got.scheme) != "1:4:6":   # the GP stop may leave it unlooked-up: then it says so
        assert not got.proven and got.unproven_candidates > 0 and got.miss_probability < 0.05


def test_cli_prove_flag(capsys):
    prof, lat = seed_path(SEED_PROFILE), seed_path("latency_search.txt")
    argv = ["search", "--profile", str(prof), "--db", str(lat), "--space", "db",
            "--bandwidth-mbps", "1", "--latency-ratio", "0.6", "--json"]
    rc, out, _ = _cli(capsys, *argv)
    default = json.loads(out.strip().splitlines()[-1])
    rc2, out, _ = _cli(capsys, *argv, "--prove")
    proved = json.loads(out.strip().splitlines()[-1])
    assert rc == rc2 == 0 and default["scheme"] == proved["scheme"] == "1:7:8"
    assert proved["proven_optimal"] and not default["proven_optimal"]
    assert (proved["stop"], default["stop"]) == ("proof", "confidence")
    assert default["evaluations"] < proved["evaluations"]
    assert "proven optimal" in out
    assert (proved["unproven_candidates"], proved["unproven_margin"]) == (0, None)
    assert default["unproven_candidates"] > 0 and default["unproven_margin"] >= 0
    assert 0 <= default["miss_probability"] < 0.05
    rc, _, err = _cli(capsys, *argv, "--confidence", "1.5")
    assert rc == 2 and "confidence" in err


# -- --space full with the real evaluator (small subsets) -----------------------------------------
def test_cli_full_space_with_real_evaluator(tmp_path, capsys):
    """Wiring only: profile here, search --space full, real fine-tune-and-test on tiny subsets."""
    from planner.accuracy_db import AccuracyDB
    from planner.data import DatasetUnavailable
    from planner.train import load_dataset
    from planner.evaluate import ensure_base_record
    from planner.models import default_weights_path, get_spec
    weights = default_weights_path(get_spec("fmnist-vgg"))
    if weights is None or not weights.is_file():
        pytest.skip("no shipped fmnist-vgg weights (planner/weights/fmnist-vgg.pt)")
    try:
        load_dataset("fashion-mnist", "test", 8)
    except DatasetUnavailable as e:
        pytest.skip(str(e))
    prof, db = tmp_path / "p.json", tmp_path / "acc.sqlite"
    rc, _, err = _cli(capsys, "profile", "--model", "fmnist-vgg", "--out", str(prof), "--warmup", "1",
                      "--repeats", "1", "--threads", "1")
    assert rc == 0, err
    # a device 10x slower than this machine (as bench/results/search_full.md): then split
    # schemes beat both single ends whatever the measurement noise of one repeat here
    doc = json.loads(prof.read_text())
    doc["device"]["full_model_s"] *= 10
    for part in doc["partitions"]:
        part["device_head_s"] *= 10
    prof.write_text(json.dumps(doc))
    with AccuracyDB(db) as adb:   # the unmodified model on the same 100 test images
        base = ensure_base_record("fmnist-vgg", adb, test_limit=100, progress=False).top1_error
    rc, out, err = _cli(capsys, "search", "--profile", str(prof), "--db", str(db), "--space", "full",
                        "--bandwidth-mbps", "0.1", "--accuracy-loss", "0.5", "--finetune-epochs", "1",
                        "--train-limit", "64", "--test-limit", "100", "--max-evaluations", "2", "--json")
    assert rc == 0, err
    obj = json.loads(out.strip().splitlines()[-1])
    assert 1 <= obj["evaluations"] <= 2 and obj["scheme"] and obj["stop"] in ("budget", "confidence", "proof"), out
    with AccuracyDB(db) as adb:
        rows = {r.scheme: r for r in adb.records("fmnist-vgg", "fashion-mnist")}
    assert obj["scheme"] in rows or obj["scheme"] in ("device-only", "cloud-only")
    if obj["scheme"] in rows:   # recorded with the subset recipe, on 100 images, meeting the bound
        r = rows[obj["scheme"]]
        assert r.test_size == 100 and "test100" in r.recipe and r.top1_error - base <= 0.5
