"""The accuracy database: one SQLite file, one row per (model, dataset, scheme, recipe).

Rows hold the top-1 error of a scheme's fine-tuned network on a test set. The row whose
scheme is `BASE_SCHEME` holds the unmodified model's error, so accuracy loss is
`row.top1_error - base_error(model, dataset)` (shared/CONTRACTS.md).

Several evaluator processes may write one file at once: WAL journal, a busy timeout and
one short `BEGIN IMMEDIATE` transaction per upsert, so no writer loses a row.

The seed's text format (shared/seed/README.md) is one scheme a line, `P+C-B*E`; the
reader keeps the last occurrence of a scheme, as the research code does.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from planner.scheme import Scheme, SchemeError

log = logging.getLogger(__name__)

BASE_SCHEME = "unmodified"      # the row of the unmodified model (its error is the base error)
SEED_RECIPE = "seed-import"     # recipe of rows imported from the seed's text format
BUSY_TIMEOUT_S = 60.0           # how long a writer waits for another writer's lock

_SEED_LINE_RE = re.compile(r"^\s*(\d+)\+(\d+)-(\d+)\*([0-9.eE+-]+)\s*$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accuracy (
    model           TEXT NOT NULL,      -- registry name, e.g. fmnist-vgg
    dataset         TEXT NOT NULL,      -- e.g. fashion-mnist
    scheme          TEXT NOT NULL,      -- P:C:B or 'unmodified'
    recipe          TEXT NOT NULL,      -- fine-tune recipe, e.g. ft0.25-seed0
    top1_error      REAL NOT NULL,      -- fraction, 0..1
    test_size       INTEGER NOT NULL,   -- images in the test set (0: unknown)
    seconds         REAL NOT NULL,      -- time spent evaluating, s
    artifact_path   TEXT,               -- fine-tuned scheme artifact, if saved
    artifact_sha256 TEXT,               -- its sha256, hex
    created_at      TEXT NOT NULL,      -- ISO 8601 UTC
    PRIMARY KEY (model, dataset, scheme, recipe)
);
"""
_COLUMNS = ("model", "dataset", "scheme", "recipe", "top1_error", "test_size", "seconds",
            "artifact_path", "artifact_sha256", "created_at")
_UPSERT_SQL = (
    f"INSERT INTO accuracy ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT (model, dataset, scheme, recipe) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[4:]))


class AccuracyDBError(ValueError):
    """A database file or seed text that cannot be read as expected."""


@dataclass(frozen=True)
class AccuracyRecord:
    """One evaluated scheme (or the unmodified model) of one model on one dataset."""

    model: str
    dataset: str
    scheme: str                          # "P:C:B" or BASE_SCHEME
    recipe: str                          # fine-tune recipe, e.g. "ft0.25-seed0" or "seed-import"
    top1_error: float                    # fraction
    test_size: int                       # images in the test set (0: unknown)
    seconds: float                       # time spent evaluating, s
    artifact_path: str | None = None     # saved scheme artifact
    artifact_sha256: str | None = None   # its sha256, hex
    created_at: str = ""                 # ISO 8601 UTC, filled on insert if empty

    def __post_init__(self) -> None:
        if self.scheme != BASE_SCHEME:
            try:
                s = Scheme.parse(self.scheme)
            except SchemeError as e:
                raise AccuracyDBError(
                    f"expected scheme P:C:B or {BASE_SCHEME!r}, got {self.scheme!r}") from e
            if not s.is_split:
                raise AccuracyDBError(
                    f"expected scheme P:C:B or {BASE_SCHEME!r}, got {self.scheme!r}")
        if not 0.0 <= self.top1_error <= 1.0:
            raise AccuracyDBError(f"expected top1_error in [0, 1], got {self.top1_error}")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class AccuracyDB:
    """An accuracy database in one SQLite file (created with its schema if absent)."""

    def __init__(self, path: str | os.PathLike, readonly: bool = False):
        """`readonly`: open an existing file without changing it (no WAL switch, no schema)."""
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise AccuracyDBError(f"accuracy database {str(self.path)!r} does not exist")
            self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                         timeout=BUSY_TIMEOUT_S, isolation_level=None)
            return
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, keeping transactions short
        self._conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self._retry(lambda: self._conn.execute("PRAGMA journal_mode = WAL"))
        self._retry(lambda: self._conn.executescript(_SCHEMA))

    # -- writing -------------------------------------------------------------------------
    def upsert(self, rec: AccuracyRecord) -> None:
        """Insert or replace the row of (model, dataset, scheme, recipe)."""
        self.upsert_many([rec])

    def upsert_many(self, recs: list[AccuracyRecord]) -> None:
        """Upsert rows in order (a later row of one key wins) in one short transaction."""
        now = utc_now_iso()
        values = [tuple(getattr(r if r.created_at else replace(r, created_at=now), c)
                        for c in _COLUMNS) for r in recs]

        def write() -> None:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(_UPSERT_SQL, values)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

        if values:
            self._retry(write)

    # -- reading -------------------------------------------------------------------------
    def get(self, model: str, dataset: str, scheme: str, recipe: str | None = None
            ) -> AccuracyRecord | None:
        """The row of a scheme; with `recipe=None` the newest row of any recipe."""
        if recipe is None:
            cur = self._conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM accuracy WHERE model=? AND dataset=? AND scheme=? "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1", (model, dataset, scheme))
        else:
            cur = self._conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM accuracy "
                "WHERE model=? AND dataset=? AND scheme=? AND recipe=?", (model, dataset, scheme, recipe))
        row = cur.fetchone()
        return AccuracyRecord(*row) if row else None

    def records(self, model: str | None = None, dataset: str | None = None) -> list[AccuracyRecord]:
        """All rows (optionally of one model and/or dataset), in insertion order."""
        where, params = [], []
        if model is not None:
            where.append("model = ?")
            params.append(model)
        if dataset is not None:
            where.append("dataset = ?")
            params.append(dataset)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM accuracy"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid"
        return [AccuracyRecord(*row) for row in self._conn.execute(sql, params)]

    def latest(self, model: str, dataset: str, recipe: str | None = None) -> dict[str, AccuracyRecord]:
        """scheme -> its newest row (of `recipe`, if given), BASE_SCHEME included."""
        out: dict[str, AccuracyRecord] = {}
        for rec in self.records(model, dataset):
            if recipe is not None and rec.recipe != recipe:
                continue
            old = out.get(rec.scheme)
            if old is None or rec.created_at >= old.created_at:
                out[rec.scheme] = rec
        return out

    def latest_matching(self, model: str, dataset: str, prefix: str) -> dict[str, AccuracyRecord]:
        """scheme -> its newest row among recipes starting with `prefix` (schemes only)."""
        out: dict[str, AccuracyRecord] = {}
        for rec in self.records(model, dataset):
            if rec.scheme == BASE_SCHEME or not rec.recipe.startswith(prefix):
                continue
            old = out.get(rec.scheme)
            if old is None or rec.created_at >= old.created_at:
                out[rec.scheme] = rec
        return out

    def base_error(self, model: str, dataset: str) -> float | None:
        """Top-1 error of the unmodified model (newest BASE_SCHEME row), or None."""
        rec = self.get(model, dataset, BASE_SCHEME)
        return rec.top1_error if rec else None

    def pairs(self) -> list[tuple[str, str]]:
        """Distinct (model, dataset) pairs held."""
        return [tuple(r) for r in self._conn.execute(
            "SELECT DISTINCT model, dataset FROM accuracy ORDER BY model, dataset")]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "AccuracyDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _retry(fn, attempts: int = 20):
        """Run fn, retrying on 'database is locked' beyond the busy timeout (WAL switch)."""
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or i == attempts - 1:
                    raise
                time.sleep(0.05 * (i + 1))
        raise AssertionError("unreachable")


# -- the seed's text format ----------------------------------------------------------------
def parse_seed_text(text: str, source: str = "<text>") -> list[tuple[Scheme, float]]:
    """(scheme, top1 error) per line of `P+C-B*E` text, in file order (duplicates kept)."""
    out: list[tuple[Scheme, float]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _SEED_LINE_RE.match(line)
        if not m:
            raise AccuracyDBError(f"{source}:{n}: expected `P+C-B*E`, got {line.strip()!r}")
        p, c, b, e = m.groups()
        try:
            out.append((Scheme.split(int(p), int(c), int(b)), float(e)))
        except (SchemeError, ValueError) as err:
            raise AccuracyDBError(f"{source}:{n}: {err}") from err
    return out


def read_seed(path: str | os.PathLike) -> dict[Scheme, float]:
    """Scheme -> top-1 error from a seed text file; the last occurrence of a scheme wins."""
    path = Path(path)
    out: dict[Scheme, float] = {}
    for scheme, err in parse_seed_text(path.read_text(), str(path)):
        out[scheme] = err  # a later line overwrites; order stays that of first occurrence
    return out


def is_seed_text(path: str | os.PathLike) -> bool:
    """True when the file is not SQLite (the seed text format is then assumed)."""
    with open(path, "rb") as f:
        return f.read(16) != b"SQLite format 3\x00"


def import_seed(db: AccuracyDB, path: str | os.PathLike, model: str, dataset: str,
                base_error: float, recipe: str = SEED_RECIPE, *, test_size: int = 0) -> int:
    """Import a seed `P+C-B*E` file into `db` under `recipe`; returns schemes written.

    The last occurrence of a scheme wins. Also writes the BASE_SCHEME row with `base_error`.
    `test_size` 0 means unknown (the seed does not record it).
    """
    rows = parse_seed_text(Path(path).read_text(), str(path))
    now = utc_now_iso()
    last: dict[Scheme, float] = {}
    for scheme, err in rows:
        last[scheme] = err  # the last occurrence wins
    db.upsert_many(
        [AccuracyRecord(model, dataset, BASE_SCHEME, recipe, float(base_error), test_size, 0.0,
                        created_at=now)]
        + [AccuracyRecord(model, dataset, str(scheme), recipe, err, test_size, 0.0, created_at=now)
           for scheme, err in last.items()])
    log.info("imported %d schemes (%d lines) from %s", len(last), len(rows), path)
    return len(last)


def export_seed(db: AccuracyDB, path: str | os.PathLike, model: str, dataset: str,
                recipe: str | None = None) -> int:
    """Write the newest row per scheme (of `recipe`, if given) as `P+C-B*E`; returns lines."""
    lines = []
    for scheme, rec in db.latest(model, dataset, recipe).items():
        if scheme == BASE_SCHEME:
            continue
        s = Scheme.parse(scheme)
        lines.append(f"{s.partition}+{s.channels}-{s.bits}*{format_error(rec.top1_error)}")
    Path(path).write_text("".join(line + "\n" for line in lines))
    return len(lines)


def format_error(e: float) -> str:
    """Shortest decimal that reads back as the same float (0.182, not 0.18200000000000002)."""
    return repr(float(e))


# -- a read-only view over several files ---------------------------------------------------
@dataclass(frozen=True)
class AccuracyView:
    """Scheme -> top-1 error merged from several files, and the base error they share."""

    errors: dict[Scheme, float]   # split schemes only; a later file overrides an earlier one
    base_error: float             # unmodified model's top-1 error, fraction
    sources: tuple[str, ...]      # the files read, in order

    def loss(self, scheme: Scheme) -> float:
        return self.errors[scheme] - self.base_error


def load_view(paths: list[str | os.PathLike], model: str, dataset: str | None,
              base_error: float | None = None, recipe: str | None = None) -> AccuracyView:
    """Merge seed text files and SQLite databases for one model and dataset.

    A scheme recorded in several files takes the value of the last file given (within a
    seed file, its last occurrence; within SQLite, its newest row). The base error is the
    newest BASE_SCHEME row of the last SQLite file that has one, else `base_error` (for
    seed files: the profile's base_top1_error). SQLite rows of schemes are those whose
    recipe starts with `recipe`; without it a file must hold a single recipe, since errors
    of different fine-tune budgets are not comparable.
    """
    errors: dict[Scheme, float] = {}
    db_base: float | None = None
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise AccuracyDBError(f"accuracy database {str(path)!r} does not exist")
        if is_seed_text(path):
            errors.update(read_seed(path))
            continue
        with AccuracyDB(path, readonly=True) as db:
            if dataset is None:
                sets = sorted({d for m, d in db.pairs() if m == model})
                if len(sets) != 1:
                    raise AccuracyDBError(
                        f"{path}: expected one dataset for model {model!r}, got {sets}; name it")
                ds = sets[0]
            else:
                ds = dataset
            latest = db.latest(model, ds)
            if not latest:
                raise AccuracyDBError(
                    f"{path}: expected rows for model {model!r} and dataset {ds!r}, "
                    f"got only {db.pairs()}")
            recipes = sorted({r.recipe for r in db.records(model, ds) if r.scheme != BASE_SCHEME})
            if recipe is None and len(recipes) > 1:
                raise AccuracyDBError(f"{path}: holds recipes {', '.join(recipes)} for {model}; "
                                      f"choose one with --recipe")
            if recipe is not None:
                latest = {s: r for s, r in latest.items() if s == BASE_SCHEME}
                latest.update(db.latest_matching(model, ds, recipe))
                if len(latest) <= 1:
                    raise AccuracyDBError(f"{path}: no {recipe}* rows for {model} on {ds}; it holds "
                                          f"{', '.join(recipes) or 'none'}")
        for scheme, rec in latest.items():
            if scheme == BASE_SCHEME:
                db_base = rec.top1_error
            else:
                errors[Scheme.parse(scheme)] = rec.top1_error
    base = db_base if db_base is not None else base_error
    if base is None:
        raise AccuracyDBError(
            "expected a base error (a SQLite row with scheme 'unmodified' or the profile's "
            "base_top1_error), got none")
    return AccuracyView(errors, float(base), tuple(str(p) for p in paths))
