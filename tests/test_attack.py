"""The attack matrix (bench.attack) at its small size: no OK to a bad request, no unhandled
status, the server answering after every attack, memory flat."""
from __future__ import annotations

from bench.attack import run_matrix, table


def test_small_attack_matrix_finds_nothing():
    rows, rss0, rss1 = run_matrix(small=True)
    report = "\n".join(table(rows, rss0, rss1))
    assert all(not r.outcome.violations for r in rows), report
    assert all(r.health_s < 1 and r.infer_s < 1 for r in rows), report
    assert (rss1 - rss0) / rss0 < 0.10, report
