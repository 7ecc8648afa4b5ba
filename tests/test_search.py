"""The search driver: both modes, ties, bounds, determinism, CLI, and the seed acceptance."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from planner.accuracy_db import AccuracyRecord, read_seed
from planner.latency import LatencyModel
from planner.profile import load_profile, save_profile
from planner.scheme import DEVICE_ONLY, Scheme
from planner.search import (DBEvaluator, FullSpaceEvaluator, Requirement, SearchConfig, Space, Strategy,
                            _Grid, build_candidates, search)
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
    assert got.evaluations == ev.evaluations < ex_ev.evaluations
    if prove:
        assert got.proven
    # every scheme it evaluated met the latency requirement
    lat = LatencyModel.from_profile(prof, BW)
    assert all(lat.latency_s(s) <= got.requirement.max_latency_s for s in ev.log)


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
    grid = _Grid(cands)
    i = next(k for k in range(len(cands)) if cands.scheme(k) == Scheme.parse("1:4:4"))
    lb = grid.lower_bounds(np.array([i]), np.array([0.3]))
    ub = grid.upper_bounds(np.array([i]), np.array([0.3]))
    at = {str(cands.scheme(k)): (lb[k], ub[k]) for k in range(len(cands))}
    assert at["1:2:3"] == (0.3, np.inf)        # dominated: error at least 0.3
    assert at["1:8:8"] == (-np.inf, 0.3)       # dominating: error at most 0.3
    assert at["1:2:8"] == (-np.inf, np.inf)    # incomparable
    assert at["0:2:3"] == (-np.inf, np.inf)    # another partition


def test_dominated_scheme_is_pruned_dominating_one_is_not():
    # accuracy mode: 0:8:8 misses the requirement, so all of partition 0 is certain to miss
    # and none of it is evaluated; 1:16:8 dominates nothing that failed and is evaluated
    prof = tiny_profile()
    table = {Scheme.split(0, c, b): 0.5 for c in range(1, 9) for b in range(1, 9)}
    table.update({Scheme.split(1, c, b): 0.5 for c in range(1, 17) for b in range(1, 9)})
    table[Scheme.parse("1:16:8")] = 0.105
    m = LatencyModel.from_profile(prof, BW)
    ev = DBEvaluator(table, BASE)
    # the proof (a lone needle in a flat table is what the GP stop may give up on)
    got = search(m, build_candidates(m, Space.DB, table), Requirement.accuracy_loss(0.01), ev,
                 SearchConfig(prove=True))
    assert got.scheme == Scheme.parse("1:16:8")
    assert Scheme.parse("1:16:8") in ev.log
    p0 = [s for s in ev.log if s.partition == 0]
    # whatever failed in partition 0 pruned everything it dominates: nothing evaluated twice
    # over, and far fewer than the 64 schemes there
    for s in p0:
        assert not any(t != s and t.channels <= s.channels and t.bits <= s.bits
                       and ev.log.index(t) > ev.log.index(s) for t in p0)
    assert got.evaluations < len(table) // 4


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


@pytest.mark.slow
def test_seed_acceptance_exact_optimum(acceptance):
    for bw, kind, v, got, proof, ex in acceptance:
        assert _same(got, ex), (bw, kind, v, "default")
        assert _same(proof, ex) and proof.proven, (bw, kind, v, "prove")
        assert got.evaluations < ex.evaluations and proof.evaluations < ex.evaluations
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
    # a minimum above any proof's count, or a confidence of 1, leaves only the proof to stop it
    m, cands, req, table, base = seed_setting(1.0, "ratio", 0.6)
    proof = search(m, cands, req, DBEvaluator(table, base), SearchConfig(prove=True))
    for cfg in (SearchConfig(min_evaluations=10_000), SearchConfig(confidence=1.0)):
        got = search(m, cands, req, DBEvaluator(table, base), cfg)
        assert got.proven and _same(got, proof)   # the acquisition differs, the proof does not
    # the knobs only move the stop along one path (the acquisition ignores them): a laxer
    # rule stops on a prefix of the default's look-ups, unproven
    default = search(m, cands, req, DBEvaluator(table, base), SearchConfig())
    lax = search(m, cands, req, DBEvaluator(table, base), SearchConfig(confidence=0.5, min_evaluations=5))
    assert not default.proven and not lax.proven
    assert 5 <= lax.evaluations < default.evaluations < proof.evaluations
    assert lax.evaluated == default.evaluated[:lax.evaluations]


@pytest.mark.slow
def test_seed_acceptance_wall_time(acceptance):
    # 2 s is the target on an idle machine; the CI machine is shared, so allow slack here
    assert max(got.wall_s for _, _, _, got, _, _ in acceptance) <= 6.0


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
    assert 1 <= obj["evaluations"] <= 2 and obj["scheme"], out and obj["stop"] in ("budget", "confidence", "proof")
    with AccuracyDB(db) as adb:
        rows = {r.scheme: r for r in adb.records("fmnist-vgg", "fashion-mnist")}
    assert obj["scheme"] in rows or obj["scheme"] in ("device-only", "cloud-only")
    if obj["scheme"] in rows:   # recorded with the subset recipe, on 100 images, meeting the bound
        r = rows[obj["scheme"]]
        assert r.test_size == 100 and "test100" in r.recipe and r.top1_error - base <= 0.5
