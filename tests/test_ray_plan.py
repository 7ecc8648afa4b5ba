"""`coinfer-plan evaluate-grid --engine ray`: one scheme per Ray task on a real two-node cluster
on this machine, rows recorded by the driver only; the same rows as the plain engine; resume."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.ray_cluster import RAY_ENV, LocalRayCluster
from tests.test_ray_engine import BLOCK_RAY, ray_installed

GRID = ["--model", "fmnist-vgg", "--partitions", "5", "--channels", "1,2", "--finetune-epochs", "1",
        "--train-limit", "128", "--test-limit", "300", "--threads", "1", "--seed", "3", "--no-progress", "--json"]


def plan(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "planner", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, **RAY_ENV))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def db_rows(path) -> dict[str, float]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT scheme, top1_error FROM accuracy WHERE scheme != 'unmodified'"))


@pytest.fixture(scope="module")
def two_nodes():
    cluster = LocalRayCluster()
    try:
        cluster.start_head({})
        cluster.add_node({})
        yield cluster
    finally:
        assert not cluster.stop(), "Ray processes left behind"


@pytest.mark.slow
@ray_installed
def test_ray_grid_gives_the_plain_rows(tmp_path, two_nodes):
    plain = plan("evaluate-grid", *GRID, "--bits", "1,2", "--db", str(tmp_path / "plain.sqlite"))
    ray_ = plan("evaluate-grid", *GRID, "--bits", "1,2", "--db", str(tmp_path / "ray.sqlite"), "--engine", "ray",
                "--ray-address", two_nodes.address)
    assert ray_["engine"] == "ray" and ray_["evaluated"] == plain["evaluated"] == 4
    by_scheme = {r["scheme"]: r for r in plain["rows"]}
    assert {r["scheme"] for r in ray_["rows"]} == set(by_scheme)
    for r in ray_["rows"]:
        assert r["top1_error"] == pytest.approx(by_scheme[r["scheme"]]["top1_error"], abs=1e-9)
        assert r["channel_indices"] == by_scheme[r["scheme"]]["channel_indices"]
    assert db_rows(tmp_path / "ray.sqlite") == pytest.approx(db_rows(tmp_path / "plain.sqlite"), abs=1e-9)
    print(f"wall: plain {plain['wall_s']} s, ray on two 1-CPU nodes {ray_['wall_s']} s")


@pytest.mark.slow
@ray_installed
def test_ray_grid_resumes_skipping_recorded_schemes(tmp_path, two_nodes):
    db = str(tmp_path / "g.sqlite")
    first = plan("evaluate-grid", *GRID, "--bits", "1", "--db", db, "--engine", "ray", "--ray-address", two_nodes.address)
    assert first["evaluated"] == 2 and first["skipped"] == 0
    done = db_rows(db)
    again = plan("evaluate-grid", *GRID, "--bits", "1,2", "--db", db, "--engine", "ray",
                 "--ray-address", two_nodes.address)
    assert again["skipped"] == 2 and again["evaluated"] == 2
    assert {r["scheme"] for r in again["rows"]} == {"5:1:2", "5:2:2"}
    rows = db_rows(db)
    assert len(rows) == 4 and all(rows[s] == done[s] for s in done)


def test_ray_plan_without_ray_says_how_to_install_it(tmp_path):
    block = BLOCK_RAY.replace("from cloud.__main__ import main", "from planner.__main__ import main")
    out = subprocess.run([sys.executable, "-c", block, "evaluate-grid", *GRID, "--bits", "1", "--db",
                          str(tmp_path / "x.sqlite"), "--engine", "ray"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "pip install 'opt-coinfer[ray]'" in out.stderr and "Traceback" not in out.stderr


def test_ray_address_needs_engine_ray(tmp_path):
    out = subprocess.run([sys.executable, "-m", "planner", "evaluate-grid", *GRID, "--db", str(tmp_path / "x.sqlite"),
                          "--ray-address", "127.0.0.1:1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "--ray-address: only with --engine ray" in out.stderr


BANK = ["bank", "build", "--model", "fmnist-vgg", "--finetune-epochs", "1", "--train-limit", "256",
        "--test-limit", "200", "--threads", "1", "--seed", "2", "--no-progress", "--json"]


@pytest.mark.slow
@ray_installed
def test_ray_bank_build_gives_the_plain_bank_and_resumes(tmp_path, two_nodes):
    plain = plan(*BANK, "--schemes", "1:8:4,5:4:2", "--out", str(tmp_path / "plain"), "--db", str(tmp_path / "p.db"))
    first = plan(*BANK, "--schemes", "1:8:4", "--out", str(tmp_path / "ray"), "--db", str(tmp_path / "r.db"),
                 "--engine", "ray", "--ray-address", two_nodes.address)
    manifest = (tmp_path / "ray" / "manifest.json").read_text()
    again = plan(*BANK, "--schemes", "1:8:4,5:4:2", "--out", str(tmp_path / "ray"), "--db", str(tmp_path / "r.db"),
                 "--engine", "ray", "--ray-address", two_nodes.address)
    assert first["engine"] == again["engine"] == "ray" and again["bank_schemes"] == 2
    assert json.loads(manifest)["schemes"][0] in json.loads((tmp_path / "ray" / "manifest.json").read_text())["schemes"], \
        "the resumed build kept the first entry as it was"
    want = {r["scheme"]: r["top1_error"] for r in plain["schemes"]}
    got = {r["scheme"]: r["top1_error"] for r in again["schemes"]}
    assert got == pytest.approx(want, abs=1e-9)
    assert db_rows(tmp_path / "r.db") == pytest.approx(db_rows(tmp_path / "p.db"), abs=1e-9)
    for name in ("1-8-4", "5-4-2"):
        files = sorted(p.name for p in (tmp_path / "ray").iterdir() if name in p.name)
        assert files, f"the driver wrote the entry file of {name}"
