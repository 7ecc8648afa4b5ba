"""The Opt-CoInfer search: one driver for both planning modes.

Two requirements, one algorithm with objective and constraint swapped (shared/STYLE.md):
- `Objective.MIN_ERROR`: latency <= a bound; the most accurate scheme (ties: faster).
- `Objective.MIN_LATENCY`: accuracy loss <= a bound; the fastest scheme (ties: more accurate).
The seconds are the latency model's cost (`planner.latency.Cost`): a frame's latency, or for
`--objective throughput` a stream's frame period (its slowest stage): the same search with
another cost, not a second search.
Latency is free (the model in `planner.latency`); only accuracy costs, through an
`Evaluator` (a database look-up, or a real fine-tune-and-test for `--space full`).

What is proven and what is believed are kept apart (planner.search.bounds):
- `proven` (JSON `proven_optimal`): every scheme that could beat the result on facts
  alone (latency; in accuracy mode, not slower) was evaluated: optimal on any table.
  `SearchConfig.prove` runs until then; exhaustive search always gets there.
- Monotonicity bounds (error does not fall when C or B falls, at one P) are evidence
  only: recorded tables break them. Without `prove` they close schemes slower than the
  incumbent (which cannot dominate it), loosened by `noise_margin`; faster schemes are
  never closed, and the GP stop weighs them. So no result is dominated (faster and at least
  as accurate) by a scheme the search evaluated or its bounds closed.
- The JSON says how far from proven a result is: `unproven_candidates` (schemes still able
  to beat it), `unproven_margin` (the smallest monotonicity violation that would let one
  of them), `miss_probability` (the GP stop's sum).

Modules: `problem` (requirement, configuration, candidates, incumbent, order), `evaluators`,
`bounds` (grid bounds, standing of every candidate), `gp` (the Gaussian process),
`acquisition` (beat probabilities, the GP stop's look-up choice), `driver` (the loop),
`result` (SearchResult, its JSON).
"""
from planner.search.driver import search
from planner.search.evaluators import DBEvaluator, Evaluator, FullSpaceEvaluator, NotEvaluatedError
from planner.search.problem import (LOSS_TOL, CandidateSet, Incumbent, Objective, Requirement, SearchConfig,
                                    SearchError, Space, Strategy, build_candidates)
from planner.search.result import SearchResult, Stop

__all__ = [
    "LOSS_TOL", "CandidateSet", "DBEvaluator", "Evaluator", "FullSpaceEvaluator", "Incumbent",
    "NotEvaluatedError", "Objective", "Requirement", "SearchConfig", "SearchError", "SearchResult",
    "Space", "Stop", "Strategy", "build_candidates", "search",
]
