"""What a search returns, and its JSON (the fields shared/CONTRACTS.md names, and more)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from planner.scheme import Scheme
from planner.search.problem import Requirement, Strategy


class Stop(enum.Enum):
    PROOF = "proof"            # no unevaluated scheme could beat the result: optimal on any table
    BOUNDS = "bounds"          # what is left the monotonicity bounds close (only schemes slower than
                               # the result: none of them can dominate it)
    CONFIDENCE = "confidence"  # the GP gives the open schemes together < 1 - confidence of beating it
    BUDGET = "budget"          # max_evaluations (or the random strategy's budget) spent
    EXHAUSTIVE = "exhaustive"  # the exhaustive baseline looked up every scheme in the latency bound


@dataclass
class SearchResult:
    requirement: Requirement
    strategy: Strategy
    scheme: Scheme | None          # None: infeasible
    latency_s: float | None        # predicted
    top1_error: float | None
    accuracy_loss: float | None
    evaluations: int               # accuracy look-ups / evaluations spent
    candidates: int                # split candidates in the space
    single_end_s: dict[str, float]
    best_single_end: str
    proven: bool                   # no unevaluated scheme could beat the result (optimal on any table)
    wall_s: float
    stop: Stop
    reason: str = ""               # why infeasible
    unproven_candidates: int = 0   # unevaluated schemes that could still beat the result
    unproven_margin: float | None = None   # the smallest monotonicity violation (top-1 error) that
                                   # would let one of them beat it; 0: one could on a monotone table
                                   # too; None: proven
    miss_probability: float | None = None  # GP stop: the open schemes' summed probability of beating
                                   # the result when it stopped (None: no GP stop)
    cost: str = "latency"          # what latency_s and single_end_s are (planner.latency.Cost)
    pipeline_depth: int = 1        # frames in flight the cost assumes (throughput)
    stages_s: dict[str, float] | None = None  # the plan's pipeline stages (planner.latency.Stages)
    frame_latency_s: float | None = None      # the plan's latency alone on the link (as Cost.LATENCY)
    evaluated: list[tuple[str, float]] = field(default_factory=list)   # (scheme, error) in order
    closed: list[str] = field(default_factory=list)   # schemes the bounds closed, unevaluated

    @property
    def feasible(self) -> bool:
        return self.scheme is not None

    def to_json(self) -> dict:
        return {
            "scheme": None if self.scheme is None else str(self.scheme),
            "predicted_latency_s": self.latency_s,
            "accuracy_loss": self.accuracy_loss,
            "top1_error": self.top1_error,
            "evaluations": self.evaluations,
            "single_end_s": self.single_end_s,
            "best_single_end": self.best_single_end,
            "requirement": self.requirement.text,
            "objective": self.requirement.objective.value,
            "strategy": self.strategy.value,
            "candidates": self.candidates,
            "proven_optimal": self.proven,
            "unproven_candidates": self.unproven_candidates,
            "unproven_margin": self.unproven_margin,
            "miss_probability": self.miss_probability,
            "stop": self.stop.value,
            "wall_s": self.wall_s,
            "reason": self.reason or None,
            "cost": self.cost,
            "pipeline_depth": self.pipeline_depth,
            "predicted_fps": (1.0 / self.latency_s if self.cost == "throughput" and self.latency_s else None),
            "predicted_frame_latency_s": self.frame_latency_s,
            "stages_s": self.stages_s,
        }
