"""The GP stop's numbers: how likely each open scheme beats the incumbent, and which look-up
lowers their total most.

A scheme's probability of beating the incumbent is the GP's probability that its error is
under the target, times the probability that it falls that far below its monotonicity bound
(a normal violation with sd `SearchConfig.violation_sd`; 1 with no bound): the product treats
the two as independent evidence, which they are not quite (the GP has seen the bounding scheme). The search stops
when these sum (a union bound) below 1 - confidence. The acquisition is the expected fall
of that sum in one look-up: the scheme's own probability, then either (it misses) its
error raises the bounds of the schemes it dominates, or (it beats) the incumbent moves and
every other scheme must beat the new one. The outcomes' errors are the GP's means truncated
at the target; schemes share those effects through a few levels of error so that one grid
pass serves them all (planner.search.bounds.Grid).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.search.bounds import Grid, Standing
from planner.search.gp import prob_below, truncated_means
from planner.search.problem import Incumbent, Problem, SearchConfig

LEVELS = 32   # error levels that stand for the outcomes' errors in the acquisition


@dataclass(frozen=True)
class Belief:
    """What the GP stop believes about the open candidates `idx`; arrays are (M,)."""

    idx: np.ndarray          # candidate indices
    log_mu: np.ndarray | None  # GP mean of log(error); None: no GP yet (under 2 look-ups)
    log_sd: np.ndarray | None  # GP std of log(error)
    target: np.ndarray       # error to stay under to beat the incumbent (tie tolerance applied)
    p_gp: np.ndarray         # GP probability of that (0.5 without a GP)
    p: np.ndarray            # p_gp x probability that the bounds are violated that far


def beat_target(prob: Problem, inc: Incumbent, latency_s: np.ndarray, tie_tol: float) -> np.ndarray:
    """Per candidate: the error it must stay under to beat the incumbent (or meet the bound).

    Accuracy mode: the accuracy bound (every open candidate is faster). Latency mode: the
    incumbent's error, widened by the tie tolerance for faster candidates (an equal error wins
    a tie) and narrowed for slower ones; infinite while there is no incumbent.
    """
    if prob.min_latency:
        return np.full(len(latency_s), prob.max_error)
    if inc.scheme is None:
        return np.full(len(latency_s), np.inf)
    return np.where(latency_s < inc.latency_s, inc.top1_error + tie_tol, inc.top1_error - tie_tol)


def violation_probability(lower: np.ndarray, target: np.ndarray, sd: float) -> np.ndarray:
    """P(error < target) for schemes whose monotonicity lower bound is `lower` (-inf: none), when
    the error may fall below the bound by a normal violation of this sd (0: never)."""
    lower, target = np.broadcast_arrays(lower, target)
    if sd <= 0:
        return (lower < target).astype(float)
    from scipy.special import ndtr   # here: the device's exhaustive planning imports no scipy
    with np.errstate(invalid="ignore"):
        p = ndtr((target - lower) / sd)
    return np.nan_to_num(p, nan=1.0)   # inf - inf: no incumbent yet, everything beats it


def belief(prob: Problem, st: Standing, inc: Incumbent, idx: np.ndarray, config: SearchConfig,
           log_mu: np.ndarray | None, log_sd: np.ndarray | None) -> Belief:
    lat = prob.cands.latency_s[idx]
    target = beat_target(prob, inc, lat, config.tie_tolerance)
    p_gp = prob_below(log_mu, log_sd, target) if log_mu is not None else np.full(len(idx), 0.5)
    if prob.min_latency:   # every scheme it dominates meets the bound: so does it, by the bounds
        p_gp = np.where(st.upper[idx] + config.noise_margin <= target, 1.0, p_gp)
    p = p_gp * violation_probability(st.lower[idx], target, config.violation_sd)
    return Belief(idx, log_mu, log_sd, target, p_gp, p)


def expected_reduction(prob: Problem, st: Standing, b: Belief, grid: Grid, config: SearchConfig) -> np.ndarray:
    """Per open candidate: the expected fall of sum(b.p) when it is looked up."""
    lat = prob.cands.latency_s[b.idx]
    lower = st.lower[b.idx]
    at = np.arange(len(b.idx))
    # a miss raises the bounds of the open schemes it dominates (not itself) to its error, at
    # a level below the GP's e_miss; without a GP (under 2 look-ups) it bounds them all away
    if b.log_mu is None:
        miss = grid.cone_sums(b.idx, b.p)[b.idx] - b.p
    else:
        e_beat, e_miss = truncated_means(b.log_mu, b.log_sd, b.target)
        levels, which = _levels(e_miss, below=True)
        bound = np.maximum(lower[None, :], levels[:, None])                     # (K, M)
        fall = b.p - np.minimum(b.p, b.p_gp * violation_probability(bound, b.target, config.violation_sd))
        miss = (grid.cone_sums(b.idx, fall)[:, b.idx] - fall)[which, at]
    # a hit makes it the incumbent
    if prob.min_latency:     # every open scheme slower than it closes
        order = np.argsort(lat, kind="stable")
        slower = np.concatenate([np.cumsum(b.p[order][::-1])[::-1], [0.0]])
        beat = slower[np.searchsorted(lat[order], lat, side="right")]
    elif b.log_mu is None:   # every other scheme must beat an error the GP cannot tell yet
        beat = float(b.p.sum()) - b.p
    else:                    # every other scheme must beat its error, at a level above e_beat,
        levels, which = _levels(e_beat, below=False)   # and the bounds close those slower than it
        after = (prob_below(b.log_mu[None, :], b.log_sd[None, :], levels[:, None])
                 * violation_probability(lower[None, :], levels[:, None], config.violation_sd))
        fall = b.p - np.minimum(b.p, after)                                  # (K, M)
        closes = (lower[None, :] - config.noise_margin >= levels[:, None]) * (b.p - fall)
        order = np.argsort(lat, kind="stable")
        slower = np.concatenate([np.cumsum(closes[:, order][:, ::-1], axis=1)[:, ::-1],
                                 np.zeros((len(levels), 1))], axis=1)
        pos = np.searchsorted(lat[order], lat, side="right")
        beat = fall.sum(axis=1)[which] - fall[which, at] + slower[which, pos]
    return b.p + (1.0 - b.p) * miss + b.p * beat


def _levels(values: np.ndarray, below: bool) -> tuple[np.ndarray, np.ndarray]:
    """Up to LEVELS levels from the values' quantiles, and per value the index of the nearest
    level below it (below=True) or above it: the side that credits the look-up less."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return np.array([values.max() if below else values.min()]), np.zeros(len(values), dtype=np.int64)
    levels = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, LEVELS)))
    if below:
        levels = np.concatenate([levels, [np.inf]]) if np.isinf(values).any() else levels
        which = np.searchsorted(levels, values, side="right") - 1
    else:
        which = np.searchsorted(levels, values, side="left")
    return levels, np.clip(which, 0, len(levels) - 1)
