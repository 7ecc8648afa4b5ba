"""What a search is given and how plans are ordered: requirement, configuration, candidates,
the incumbent, and the facts (latency, feasibility) every strategy shares."""
from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from planner.latency import LatencyModel
from planner.scheme import CLOUD_ONLY, DEVICE_ONLY, MAX_BITS, Scheme

log = logging.getLogger(__name__)

LOSS_TOL = 1e-9   # float slack when comparing an accuracy loss with its bound
NO_RANK = 1 << 62  # rank of "no plan": after every candidate


class SearchError(ValueError):
    """A search that cannot run as asked."""


class Objective(enum.Enum):
    MIN_ERROR = "min-error"        # latency requirement: most accurate (ties: faster)
    MIN_LATENCY = "min-latency"    # accuracy requirement: fastest (ties: more accurate)


class Space(enum.Enum):
    DB = "db"        # only schemes whose accuracy is recorded
    FULL = "full"    # every P:C:B; missing ones are evaluated


class Strategy(enum.Enum):
    BAYES = "bayes"            # GP acquisition + monotonicity bounds (the planner)
    EXHAUSTIVE = "exhaustive"  # evaluate every candidate that meets the latency bound
    RANDOM = "random"          # evaluate a random sample of that size budget


@dataclass(frozen=True)
class Requirement:
    """What the plan must meet; build with the classmethods."""

    objective: Objective
    max_latency_s: float = math.inf      # latency bound, s (MIN_ERROR)
    max_accuracy_loss: float = math.inf  # loss bound, fraction (MIN_LATENCY)
    text: str = ""                       # as the user gave it, for messages

    @classmethod
    def latency_ratio(cls, ratio: float, single_end_s: float) -> "Requirement":
        if not ratio > 0:
            raise SearchError(f"expected latency ratio > 0, got {ratio}")
        return cls(Objective.MIN_ERROR, max_latency_s=ratio * single_end_s,
                   text=f"latency <= {ratio:g} x {single_end_s:.4g} s = {ratio * single_end_s:.4g} s")

    @classmethod
    def latency_s(cls, seconds: float) -> "Requirement":
        if not seconds > 0:
            raise SearchError(f"expected latency bound > 0 s, got {seconds}")
        return cls(Objective.MIN_ERROR, max_latency_s=seconds, text=f"latency <= {seconds:g} s")

    @classmethod
    def accuracy_loss(cls, loss: float) -> "Requirement":
        return cls(Objective.MIN_LATENCY, max_accuracy_loss=loss, text=f"accuracy loss <= {loss:g}")


@dataclass(frozen=True)
class SearchConfig:
    seed: int = 0                 # GP and random-search seed; the result is a function of it
    prove: bool = False           # True: stop only when every scheme that could beat the result was
                                  # evaluated: exact on any database, whatever the bounds say (the
                                  # margins below do not apply); the latency mode looks up every
                                  # scheme that meets the latency bound
    noise_margin: float = 0.002   # without prove: the bounds close a scheme slower than the incumbent
                                  # when it could beat it only with an error more than this below an
                                  # evaluated scheme that dominates it (seed repeats differ by ~0.002)
    violation_sd: float = 0.002   # without prove: sd of a normal violation of those bounds; weighs the
                                  # schemes faster than the incumbent, which the bounds never close
    confidence: float = 0.95      # without prove: stop once the open schemes beat the incumbent with
                                  # total probability (sum, a union bound) below 1 - confidence
    min_evaluations: int = 10     # without prove: look-ups before the GP may stop the search; about
                                  # 3 per GP input dimension (P, C, B), so its length scales rest
                                  # on data rather than on their priors
    tie_tolerance: float = 0.0005 # errors closer than this are a tie (half the 0.001 resolution of
                                  # recorded errors): the GP's beat probability counts a faster scheme
                                  # at err < incumbent + tol, a slower one at err < incumbent - tol
    max_evaluations: int | None = None  # stop early (then optimality is not proven)
    random_budget: int = 20       # evaluations of Strategy.RANDOM
    progress: bool = False        # tqdm bar over evaluations


@dataclass(frozen=True)
class CandidateSet:
    """Split candidates as parallel arrays, with their predicted seconds: the latency model's
    cost (planner.latency.Cost), the latency itself unless the plan is for a stream's rate."""

    partition: np.ndarray   # (N,) int P
    channels: np.ndarray    # (N,) int C
    bits: np.ndarray        # (N,) int B
    latency_s: np.ndarray   # (N,) float predicted seconds (LatencyModel.cost_s)
    conv_channels: tuple[int, ...]   # C max per partition

    def __len__(self) -> int:
        return len(self.partition)

    def scheme(self, i: int) -> Scheme:
        return Scheme.split(int(self.partition[i]), int(self.channels[i]), int(self.bits[i]))


def build_candidates(model: LatencyModel, space: Space, recorded: Mapping[Scheme, float]) -> CandidateSet:
    """Every P:C:B of the profile (FULL) or the recorded ones that fit it (DB), sorted P, C, B."""
    parts = model.profile.partitions
    conv = tuple(p.conv_channels for p in parts)
    if space is Space.FULL:
        rows = [(p, c, b) for p in range(len(parts)) for c in range(1, conv[p] + 1)
                for b in range(1, MAX_BITS + 1)]
    else:
        rows, dropped = [], 0
        for s in recorded:
            if s.is_split and s.partition < len(parts) and s.channels <= conv[s.partition]:
                rows.append((s.partition, s.channels, s.bits))
            else:
                dropped += 1
        if dropped:
            log.warning("%d recorded schemes do not fit the profile's partitions; ignored", dropped)
        rows.sort()
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    lat = model.split_costs(arr[:, 0], arr[:, 1], arr[:, 2]) if len(arr) else np.zeros(0)
    return CandidateSet(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), lat, conv)


Key = tuple[float, float, int]   # a plan's place in the objective's order; smaller is better


@dataclass(frozen=True)
class Incumbent:
    """The best plan found so far that meets the requirement; `scheme` None: none yet."""

    key: Key = (math.inf, math.inf, NO_RANK)
    scheme: Scheme | None = None
    latency_s: float = math.inf      # predicted, s (inf: none)
    top1_error: float = math.inf     # fraction (inf: none)


class Problem:
    """One requirement on one latency model: candidates, single ends, order, feasibility."""

    def __init__(self, model: LatencyModel, cands: CandidateSet, req: Requirement, base_error: float):
        self.model, self.cands, self.req = model, cands, req
        self.base_error = base_error
        single = model.single_end_costs()
        self.single_end_s = {str(s): t for s, t in single.items()}
        self.best_single = model.best_single_end_cost()
        self.rank = np.arange(len(cands), dtype=np.int64)  # candidates are sorted P, C, B
        self.lat_ok = cands.latency_s <= req.max_latency_s
        # single-end plans: known error (the unmodified model's), never evaluated; rank before splits
        self.single = [(s, single[s], -2 + i) for i, s in enumerate((DEVICE_ONLY, CLOUD_ONLY))]

    @property
    def min_latency(self) -> bool:
        return self.req.objective is Objective.MIN_LATENCY

    @property
    def max_error(self) -> float:
        """The largest error that meets the accuracy bound (inf in latency mode)."""
        return self.base_error + self.req.max_accuracy_loss + LOSS_TOL

    def key(self, lat: float, err: float, rank: int) -> Key:
        return (lat, err, rank) if self.min_latency else (err, lat, rank)

    def better(self, lat: np.ndarray, err: np.ndarray, rank: np.ndarray, key: Key) -> np.ndarray:
        """Vectorised key(lat, err, rank) < key."""
        a, b = (lat, err) if self.min_latency else (err, lat)
        return (a < key[0]) | ((a == key[0]) & ((b < key[1]) | ((b == key[1]) & (rank < key[2]))))

    def error_ok(self, err: float | np.ndarray):
        return np.asarray(err) <= self.max_error

    def initial_incumbent(self) -> Incumbent:
        best = Incumbent()
        for s, t, r in self.single:
            if t <= self.req.max_latency_s and self.error_ok(self.base_error):
                k = self.key(t, self.base_error, r)
                if k < best.key:
                    best = Incumbent(k, s, t, self.base_error)
        return best

    def offer(self, inc: Incumbent, i: int, err: float) -> Incumbent:
        """The better of the incumbent and candidate i at error `err`."""
        lat = float(self.cands.latency_s[i])
        if self.lat_ok[i] and self.error_ok(err):
            k = self.key(lat, err, int(self.rank[i]))
            if k < inc.key:
                return Incumbent(k, self.cands.scheme(i), lat, err)
        return inc

    def threshold(self, inc: Incumbent) -> np.ndarray:
        """Per candidate: the largest error with which it could beat the incumbent (exact; ties
        in the order decided by latency and rank are not told apart here)."""
        lat = self.cands.latency_s
        if self.min_latency:
            return np.where(lat < inc.latency_s, self.max_error, min(self.max_error, inc.top1_error))
        return np.full(len(lat), inc.top1_error)

    def infeasible_reason(self, errors: list[float]) -> str:
        if not self.min_latency:
            fastest = min([t for _, t, _ in self.single] + list(self.cands.latency_s))
            return (f"no scheme meets {self.req.text}: the fastest scheme takes {fastest:.4f} s "
                    f"at {self.model.link.bandwidth_mbps:g} Mbps")
        best = min([0.0] + [e - self.base_error for e in errors])
        return (f"no scheme meets {self.req.text}: the best achievable accuracy loss found is {best:.4f} "
                f"(single-end schemes lose 0)")
