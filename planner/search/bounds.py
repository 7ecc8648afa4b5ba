"""Monotonicity bounds, and where every candidate stands against the incumbent.

Monotonicity (for a fixed P, error does not fall when C or B falls) makes an evaluated
scheme a lower bound on the error of the schemes it dominates (same P, C and B no larger)
and an upper bound for those that dominate it. Recorded errors break it: on the seed's
tables 1:4:7 is 0.165 while 1:4:6 is 0.161, and 400-odd dominated pairs are inverted, by up
to 0.08. So a bound is evidence, never a fact, and this module keeps the two apart:

- A *contender* is an unevaluated scheme that could beat the incumbent on facts alone
  (it meets the latency bound; in accuracy mode it is not slower). The result is proven
  optimal, on any table, exactly when no contender is left.
- The bounds may *close* a contender only when it is slower than the incumbent, so a closed
  scheme can never dominate the result (be faster and at least as accurate), only beat it
  in latency mode by violating monotonicity. Faster contenders stay open however their
  bounds look: the GP stop weighs them (planner.search.acquisition).
- A contender's *need* is its lower bound minus the error it must reach: the violation of
  monotonicity it would take to beat the incumbent. The smallest need over the contenders
  is what the result's `unproven_margin` reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from planner.scheme import MAX_BITS
from planner.search.problem import CandidateSet, Incumbent, Problem


class Grid:
    """Per-partition (C, B) grids for dominance sums and bounds. C is stored by its rank among
    the candidates' channel counts, which keeps the order and makes a sparse space's grid small."""

    def __init__(self, cands: CandidateSet):
        values = np.unique(cands.channels)
        self.p, self.c, self.b = cands.partition, np.searchsorted(values, cands.channels), cands.bits
        self.shape = (len(cands.conv_channels), max(len(values), 1), MAX_BITS + 1)

    def scatter(self, idx: np.ndarray, values: np.ndarray, fill: float) -> np.ndarray:
        g = np.full(self.shape, fill)
        g[self.p[idx], self.c[idx], self.b[idx]] = values
        return g

    def lower_bounds(self, idx: np.ndarray, err: np.ndarray) -> np.ndarray:
        """Per candidate: the largest error among evaluated schemes that dominate it (-inf: none)."""
        if not len(idx):
            return np.full(len(self.p), -np.inf)
        g = self.scatter(idx, err, -np.inf)
        g = np.maximum.accumulate(g[:, ::-1, :], axis=1)[:, ::-1, :]
        g = np.maximum.accumulate(g[:, :, ::-1], axis=2)[:, :, ::-1]
        return g[self.p, self.c, self.b]

    def upper_bounds(self, idx: np.ndarray, err: np.ndarray) -> np.ndarray:
        """Per candidate: the smallest error among evaluated schemes it dominates (inf: none)."""
        if not len(idx):
            return np.full(len(self.p), np.inf)
        g = self.scatter(idx, err, np.inf)
        g = np.minimum.accumulate(g, axis=1)
        g = np.minimum.accumulate(g, axis=2)
        return g[self.p, self.c, self.b]

    def cone_sums(self, idx: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Per candidate: total weight of the `idx` candidates it dominates (itself included).
        `weight` (M,) gives (N,); (K, M), K weightings at once, gives (K, N)."""
        w = np.atleast_2d(weight)
        g = np.zeros((len(w),) + self.shape)
        np.add.at(g, (np.arange(len(w))[:, None], self.p[idx], self.c[idx], self.b[idx]), w)
        g = g.cumsum(axis=2).cumsum(axis=3)[:, self.p, self.c, self.b]
        return g if np.ndim(weight) == 2 else g[0]


@dataclass(frozen=True)
class Standing:
    """Every candidate against the incumbent, after the evaluations so far. Arrays are (N,)."""

    lower: np.ndarray       # raw monotone lower bound on the error; -inf where nothing bounds it
    upper: np.ndarray       # raw monotone upper bound on the error; +inf where nothing bounds it
    threshold: np.ndarray   # the largest error with which it could beat the incumbent
    contender: np.ndarray   # bool: unevaluated and could beat the incumbent on facts alone
    closed: np.ndarray      # bool: contenders the bounds close (slower than the incumbent)

    @property
    def open(self) -> np.ndarray:
        return self.contender & ~self.closed

    @property
    def need(self) -> np.ndarray:
        """Monotonicity violation (error) it would take to beat the incumbent; -inf: none."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(self.lower - self.threshold, nan=-np.inf)

    @property
    def unproven_candidates(self) -> int:
        return int(self.contender.sum())

    def unproven_margin(self) -> float | None:
        """The smallest violation that would let a contender beat the incumbent: 0 when one could
        beat it on a monotone table; None when nothing is left to beat it (proven)."""
        if not self.contender.any():
            return None
        return max(0.0, float(self.need[self.contender].min()))


def contenders(prob: Problem, inc: Incumbent, unevaluated: np.ndarray) -> np.ndarray:
    """Bool (N,): unevaluated candidates that could beat the incumbent on facts alone."""
    zero = np.zeros(len(prob.cands))   # a top-1 error is never below 0: all that is known unevaluated
    return (unevaluated & prob.lat_ok & prob.error_ok(zero)
            & prob.better(prob.cands.latency_s, zero, prob.rank, inc.key))


def standing(prob: Problem, inc: Incumbent, evaluated: np.ndarray, errors: np.ndarray, grid: Grid,
             close_margin: float | None) -> Standing:
    """`evaluated`: indices looked up, `errors` theirs. `close_margin` None: close nothing (a
    proof); else the bounds, loosened by it, close contenders slower than the incumbent."""
    cands = prob.cands
    lower = grid.lower_bounds(evaluated, errors)
    upper = grid.upper_bounds(evaluated, errors)
    unevaluated = np.ones(len(cands), dtype=bool)
    unevaluated[evaluated] = False
    contender = contenders(prob, inc, unevaluated)
    closed = np.zeros(len(cands), dtype=bool)
    if close_margin is not None and math.isfinite(inc.latency_s):
        floor = lower - close_margin
        closed = (contender & (cands.latency_s > inc.latency_s)
                  & ~(prob.error_ok(floor) & prob.better(cands.latency_s, floor, prob.rank, inc.key)))
    return Standing(lower, upper, prob.threshold(inc), contender, closed)
