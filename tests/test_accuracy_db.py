"""The accuracy database: upserts, concurrent writers, the seed's `P+C-B*E` format."""
from __future__ import annotations

import sqlite3
import multiprocessing as mp
from pathlib import Path

import pytest

from planner.accuracy_db import (BASE_SCHEME, AccuracyDB, AccuracyDBError, AccuracyRecord,
                                 export_seed, import_seed, is_seed_text, parse_seed_text,
                                 read_seed)
from planner.scheme import Scheme

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seed"
SEED_FILES = ("accuracy_search.txt", "latency_search.txt")


def seed_file(name: str) -> Path:
    path = SEED_DIR / name
    if not path.is_file():
        pytest.skip(f"seed scenario file {path} is absent (shared/seed/ not checked out beside the repo)")
    return path


def rec(scheme: str, err: float, recipe: str = "r0", **kw) -> AccuracyRecord:
    return AccuracyRecord("fmnist-vgg", "fashion-mnist", scheme, recipe, err, 100, 0.5, **kw)


def test_upsert_is_idempotent_and_replaces(tmp_path):
    db = AccuracyDB(tmp_path / "a.sqlite")
    db.upsert(rec("1:2:3", 0.2))
    db.upsert(rec("1:2:3", 0.2))
    assert len(db.records()) == 1
    db.upsert(rec("1:2:3", 0.3))
    got = db.get("fmnist-vgg", "fashion-mnist", "1:2:3", "r0")
    assert got is not None and got.top1_error == 0.3 and got.created_at
    assert len(db.records("fmnist-vgg", "fashion-mnist")) == 1
    assert db.records("other") == []
    db.close()


def test_get_without_recipe_is_newest(tmp_path):
    db = AccuracyDB(tmp_path / "a.sqlite")
    db.upsert(rec("1:2:3", 0.2, "old", created_at="2020-01-01T00:00:00+00:00"))
    db.upsert(rec("1:2:3", 0.4, "new", created_at="2024-01-01T00:00:00+00:00"))
    assert db.get("fmnist-vgg", "fashion-mnist", "1:2:3").recipe == "new"
    assert db.get("fmnist-vgg", "fashion-mnist", "1:2:3", "old").top1_error == 0.2
    assert db.get("fmnist-vgg", "fashion-mnist", "9:9:9") is None


def test_base_error(tmp_path):
    db = AccuracyDB(tmp_path / "a.sqlite")
    assert db.base_error("fmnist-vgg", "fashion-mnist") is None
    db.upsert(rec(BASE_SCHEME, 0.07))
    assert db.base_error("fmnist-vgg", "fashion-mnist") == 0.07


def test_reopen_keeps_rows(tmp_path):
    path = tmp_path / "a.sqlite"
    with AccuracyDB(path) as db:
        db.upsert(rec("0:1:1", 0.5, artifact_path="x.pt", artifact_sha256="ab" * 32))
    with AccuracyDB(path) as db:
        (r,) = db.records()
        assert r.artifact_sha256 == "ab" * 32 and r.test_size == 100
    assert not is_seed_text(path)


@pytest.mark.parametrize("bad", ["1:2", "device-only", "0:0:4", "1:2:9"])
def test_record_refuses_bad_scheme(bad):
    with pytest.raises(AccuracyDBError, match="expected scheme"):
        rec(bad, 0.1)


def _writer(path: str, worker: int, n: int) -> None:
    db = AccuracyDB(path)
    for i in range(n):
        db.upsert(AccuracyRecord("m", "d", f"{worker}:{i + 1}:4", "r", 0.1, 10, 0.0))
    db.close()


def test_two_processes_writing_at_once_lose_no_row(tmp_path):
    path = str(tmp_path / "c.sqlite")
    n = 150
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, n)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with AccuracyDB(path) as db:
        got = {r.scheme for r in db.records("m", "d")}
    assert got == {f"{w}:{i + 1}:4" for w in range(2) for i in range(n)}


def test_parse_seed_text_keeps_duplicates_and_trailing_spaces():
    rows = parse_seed_text("1+5-7*0.163 \n0+1-6*0.185\n\n1+5-7*0.160   \n")
    assert rows == [(Scheme.split(1, 5, 7), 0.163), (Scheme.split(0, 1, 6), 0.185),
                    (Scheme.split(1, 5, 7), 0.160)]
    with pytest.raises(AccuracyDBError, match=r"<text>:1: expected `P\+C-B\*E`"):
        parse_seed_text("1:5:7 0.1")


@pytest.mark.parametrize("name", SEED_FILES)
def test_seed_reader_last_occurrence_wins(name):
    table = read_seed(seed_file(name))
    assert table[Scheme.split(1, 5, 7)] == 0.160   # listed as 0.163, later 0.160 (seed README)
    assert len(table) > 400


@pytest.mark.parametrize("name", SEED_FILES)
def test_seed_import_then_export_reproduces_file(tmp_path, name):
    path = seed_file(name)
    expected = read_seed(path)
    db = AccuracyDB(tmp_path / "s.sqlite")
    n = import_seed(db, path, "vgg16_bn", "stanford_cars", 0.151)
    assert n == len(expected)
    assert db.base_error("vgg16_bn", "stanford_cars") == 0.151
    out = tmp_path / "out.txt"
    assert export_seed(db, out, "vgg16_bn", "stanford_cars") == n
    exported = parse_seed_text(out.read_text())
    assert len(exported) == n  # each scheme once
    assert dict(exported) == expected
    # a second import is idempotent
    assert import_seed(db, path, "vgg16_bn", "stanford_cars", 0.151) == n
    assert len(db.records("vgg16_bn", "stanford_cars")) == n + 1


def _two_recipes(path):
    from planner.accuracy_db import BASE_SCHEME
    with AccuracyDB(path) as db:
        db.upsert(AccuracyRecord("m", "d", BASE_SCHEME, "weights-x", 0.10, 100, 1.0))
        db.upsert(AccuracyRecord("m", "d", "1:2:3", "ft0-seed0", 0.50, 100, 1.0))
        db.upsert(AccuracyRecord("m", "d", "1:2:3", "ft0.1-seed0", 0.20, 100, 1.0))
        db.upsert(AccuracyRecord("m", "d", "2:2:3", "ft0.1-seed0", 0.30, 100, 1.0))
        db._conn.execute("PRAGMA journal_mode = DELETE")


def test_load_view_keeps_fine_tune_budgets_apart(tmp_path):
    from planner.accuracy_db import load_view
    from planner.scheme import Scheme
    path = tmp_path / "mixed.sqlite"
    _two_recipes(path)
    with pytest.raises(AccuracyDBError, match="ft0-seed0, ft0.1-seed0.*--recipe"):
        load_view([path], "m", "d")
    tuned = load_view([path], "m", "d", recipe="ft0.1-")
    assert tuned.errors == {Scheme.parse("1:2:3"): 0.20, Scheme.parse("2:2:3"): 0.30} and tuned.base_error == 0.10
    untuned = load_view([path], "m", "d", recipe="ft0-")
    assert untuned.errors == {Scheme.parse("1:2:3"): 0.50}
    with pytest.raises(AccuracyDBError, match="no ft1-\\* rows"):
        load_view([path], "m", "d", recipe="ft1-")


def test_reading_leaves_the_file_unchanged(tmp_path):
    """A shipped database under version control stays byte-identical when only read."""
    from planner.accuracy_db import load_view
    path = tmp_path / "shipped.sqlite"
    _two_recipes(path)
    before = path.read_bytes()
    load_view([path], "m", "d", recipe="ft0.1-")
    with AccuracyDB(path, readonly=True) as db:
        assert len(db.records()) == 4
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db._conn.execute("DELETE FROM accuracy")
    assert path.read_bytes() == before and not (tmp_path / "shipped.sqlite-wal").exists()
