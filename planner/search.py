"""The Opt-CoInfer search: one driver for both planning modes.

Two requirements, one algorithm with objective and constraint swapped (shared/STYLE.md):
- `Objective.MIN_ERROR`: latency <= a bound; the most accurate scheme (ties: faster).
- `Objective.MIN_LATENCY`: accuracy loss <= a bound; the fastest scheme (ties: more accurate).
Latency is free (the model in `planner.latency`); only accuracy costs, through an
`Evaluator` (a database look-up, or a real fine-tune-and-test for `--space full`).

The Bayesian driver keeps, for every candidate, bounds on its error from the evaluated
schemes. Monotonicity (for a fixed P, error does not fall when C or B falls): an
evaluated scheme is a lower bound for the schemes it dominates (same P, C and B no
larger) and an upper bound for those that dominate it. A candidate stays *open* while,
at its lowest possible error, it could still meet the requirement and beat the incumbent
(its key: (latency, error) or (error, latency), then P:C:B order). Candidates that
cannot meet a latency bound are never open. With `SearchConfig.prove` the search stops
when nothing is open, so the incumbent is optimal under the monotonicity assumption.
By default it stops earlier, as Bayesian optimisation intends: once the GP gives the
open candidates together (a union bound: the sum of their probabilities) less than
1 - `confidence` of beating the incumbent (error under the incumbent's, or under the
accuracy bound for the faster schemes of accuracy mode), after `min_evaluations`.
Then the acquisition is that probability times the closure score below. Which open candidate to
evaluate next is chosen with a Gaussian process (scikit-learn, Matern kernel) over
normalised (P, C, B): the acquisition is the expected number of open candidates the
evaluation closes, with the GP's probability that the candidate meets the constraint
(accuracy mode) or beats the incumbent (latency mode) deciding between "becomes the
incumbent" and "bounds the schemes it dominates".

Exhaustive and random search use the same evaluators and keys as baselines.
"""
from __future__ import annotations

import enum
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import numpy as np

from planner.latency import LatencyModel
from planner.scheme import CLOUD_ONLY, DEVICE_ONLY, MAX_BITS, Scheme

log = logging.getLogger(__name__)

LOSS_TOL = 1e-9   # float slack when comparing an accuracy loss with its bound


class SearchError(ValueError):
    """A search that cannot run as asked."""


class NotEvaluatedError(KeyError):
    """A database evaluator asked for a scheme it has no record of."""


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
    noise_margin: float = 0.002   # error slack in the bounds: repeated evaluations differ by
                                  # ~0.002-0.003 (shared/seed/README.md); 0 trusts them exactly
    prove: bool = False           # True: stop only when no unevaluated candidate can beat the
                                  # incumbent under the bounds (exact under monotonicity; in
                                  # latency mode it must look up every undominated feasible scheme)
    confidence: float = 0.95      # prove=False: stop once the candidates the bounds leave open
                                  # beat the incumbent with total GP probability (sum, a union
                                  # bound) below 1 - confidence: P(result not optimal) under the GP
    min_evaluations: int = 10     # prove=False: look-ups before the GP may stop the search; about
                                  # 3 per GP input dimension (P, C, B), so its length scales rest
                                  # on data rather than on their priors
    tie_tolerance: float = 0.0005 # errors closer than this are a tie (half the 0.001 resolution of
                                  # recorded errors); a faster candidate beats the incumbent at
                                  # err < incumbent + tol, a slower one needs err < incumbent - tol
    max_evaluations: int | None = None  # stop early (then optimality is not proven)
    random_budget: int = 20       # evaluations of Strategy.RANDOM
    slow_weight: float = 0.05     # acquisition weight of closing a candidate slower than the
                                  # predicted optimum (it closes for free once that is found)
    progress: bool = False        # tqdm bar over evaluations


# -- evaluators ------------------------------------------------------------------------------
class Evaluator(Protocol):
    """Top-1 error of a split scheme; counts what it spends."""

    base_error: float   # unmodified model's top-1 error
    evaluations: int    # look-ups or evaluations spent so far

    def evaluate(self, scheme: Scheme) -> float: ...


class DBEvaluator:
    """Looks schemes up in a recorded table; every look-up counts as an evaluation."""

    def __init__(self, errors: Mapping[Scheme, float], base_error: float):
        self.errors = dict(errors)
        self.base_error = float(base_error)
        self.evaluations = 0
        self.log: list[Scheme] = []

    def evaluate(self, scheme: Scheme) -> float:
        if scheme not in self.errors:
            raise NotEvaluatedError(f"expected a recorded scheme, got {scheme} (not in the database)")
        self.evaluations += 1
        self.log.append(scheme)
        return self.errors[scheme]


EvaluateFn = Callable[..., object]   # planner.evaluate.evaluate_scheme's signature


class FullSpaceEvaluator(DBEvaluator):
    """Looks recorded schemes up; fine-tunes and tests the others, recording them in `db`.

    `evaluate_fn(model_name, scheme, finetune_epochs, db, seed, train_limit=, test_limit=)
    -> AccuracyRecord`
    defaults to `planner.evaluate.evaluate_scheme`, imported when first needed.
    """

    def __init__(self, errors: Mapping[Scheme, float], base_error: float, model_name: str,
                 db, finetune_epochs: float, seed: int = 0, evaluate_fn: EvaluateFn | None = None,
                 train_limit: int | None = None, test_limit: int | None = None):
        super().__init__(errors, base_error)
        self.model_name = model_name
        self.db = db
        self.finetune_epochs = finetune_epochs
        self.seed = seed
        self._evaluate_fn = evaluate_fn
        self.limits = {"train_limit": train_limit, "test_limit": test_limit}   # images; None: all
        self.new_evaluations = 0

    def evaluate(self, scheme: Scheme) -> float:
        if scheme not in self.errors:
            fn = self._evaluate_fn
            if fn is None:
                from planner.evaluate import evaluate_scheme as fn  # lazy: pulls in torch data
            rec = fn(self.model_name, scheme, self.finetune_epochs, self.db, self.seed, **self.limits)
            self.errors[scheme] = float(rec.top1_error)
            self.new_evaluations += 1
            log.info("evaluated %s: top-1 error %.4f", scheme, rec.top1_error)
        return super().evaluate(scheme)


# -- candidates ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidateSet:
    """Split candidates as parallel arrays, with their predicted latency; seconds."""

    partition: np.ndarray   # (N,) int P
    channels: np.ndarray    # (N,) int C
    bits: np.ndarray        # (N,) int B
    latency_s: np.ndarray   # (N,) float predicted seconds
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
    lat = model.split_latencies(arr[:, 0], arr[:, 1], arr[:, 2]) if len(arr) else np.zeros(0)
    return CandidateSet(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), lat, conv)


# -- results ---------------------------------------------------------------------------------
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
    proven: bool                   # stopped because nothing could beat the incumbent (else: GP stop
                                   # or max_evaluations)
    wall_s: float
    reason: str = ""               # why infeasible
    stop: str = ""                 # why it stopped: proof, confidence (GP), budget, exhaustive
    evaluated: list[tuple[str, float]] = field(default_factory=list)   # (scheme, error) in order

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
            "stop": self.stop,
            "wall_s": self.wall_s,
            "reason": self.reason or None,
        }


class _Keys:
    """Order of plans for one objective; a smaller key is better. Rank breaks full ties."""

    def __init__(self, objective: Objective):
        self.objective = objective

    def key(self, lat: float, err: float, rank: int) -> tuple[float, float, int]:
        if self.objective is Objective.MIN_LATENCY:
            return (lat, err, rank)
        return (err, lat, rank)

    def better(self, lat: np.ndarray, err: np.ndarray, rank: np.ndarray,
               inc: tuple[float, float, int]) -> np.ndarray:
        """Vectorised key(lat, err, rank) < inc."""
        a, b = (lat, err) if self.objective is Objective.MIN_LATENCY else (err, lat)
        return (a < inc[0]) | ((a == inc[0]) & ((b < inc[1]) | ((b == inc[1]) & (rank < inc[2]))))


# -- the driver ------------------------------------------------------------------------------
class _Problem:
    """Shared set-up of every strategy: candidates, single ends, keys, feasibility."""

    def __init__(self, model: LatencyModel, cands: CandidateSet, req: Requirement, base_error: float):
        self.model, self.cands, self.req = model, cands, req
        self.base_error = base_error
        self.keys = _Keys(req.objective)
        single = model.single_end()
        self.single_end_s = {str(s): t for s, t in single.items()}
        self.best_single = model.best_single_end()
        self.rank = np.arange(len(cands), dtype=np.int64)  # candidates are sorted P, C, B
        self.lat_ok = cands.latency_s <= req.max_latency_s
        # single-end plans: known error (the unmodified model's), never evaluated
        self.single = [(s, t, -2 + i) for i, (s, t) in enumerate(((DEVICE_ONLY, single[DEVICE_ONLY]),
                                                                  (CLOUD_ONLY, single[CLOUD_ONLY])))]

    def error_ok(self, err: float | np.ndarray):
        return (np.asarray(err) - self.base_error) <= self.req.max_accuracy_loss + LOSS_TOL

    def initial_incumbent(self) -> tuple[tuple[float, float, int], Scheme | None, float | None, float | None]:
        best = ((math.inf, math.inf, 1 << 62), None, None, None)
        for s, t, r in self.single:
            if t <= self.req.max_latency_s and self.error_ok(self.base_error):
                k = self.keys.key(t, self.base_error, r)
                if k < best[0]:
                    best = (k, s, t, self.base_error)
        return best

    def infeasible_reason(self, evaluated: dict[int, float]) -> str:
        if self.req.objective is Objective.MIN_ERROR:
            fastest = min([t for _, t, _ in self.single] + list(self.cands.latency_s))
            return (f"no scheme meets {self.req.text}: the fastest scheme takes {fastest:.4f} s "
                    f"at {self.model.link.bandwidth_mbps:g} Mbps")
        best = min([0.0] + [e - self.base_error for e in evaluated.values()])
        return (f"no scheme meets {self.req.text}: the best achievable accuracy loss found is {best:.4f} "
                f"(single-end schemes lose 0)")


def search(model: LatencyModel, cands: CandidateSet, req: Requirement, evaluator: Evaluator,
           config: SearchConfig = SearchConfig(), strategy: Strategy = Strategy.BAYES) -> SearchResult:
    """Plan one requirement on one latency model; see the module docstring."""
    t0 = time.perf_counter()
    prob = _Problem(model, cands, req, evaluator.base_error)
    start = evaluator.evaluations
    run = {Strategy.BAYES: _bayes, Strategy.EXHAUSTIVE: _exhaustive, Strategy.RANDOM: _random}[strategy]
    inc, evaluated, proven = run(prob, evaluator, config)
    key, scheme, lat, err = inc
    res = SearchResult(
        requirement=req, strategy=strategy, scheme=scheme, latency_s=lat, top1_error=err,
        accuracy_loss=None if err is None else err - prob.base_error,
        evaluations=evaluator.evaluations - start, candidates=len(cands),
        single_end_s=prob.single_end_s, best_single_end=str(prob.best_single[0]), proven=proven,
        wall_s=time.perf_counter() - t0,
        evaluated=[(str(cands.scheme(i)), e) for i, e in evaluated.items()])
    budget = (config.random_budget if strategy is Strategy.RANDOM else config.max_evaluations)
    if strategy is Strategy.EXHAUSTIVE:
        res.stop = "exhaustive"
    elif proven:
        res.stop = "proof"
    elif budget is not None and len(evaluated) >= budget:
        res.stop = "budget"
    else:
        res.stop = "confidence"
    if scheme is None:
        res.reason = prob.infeasible_reason(evaluated)
    return res


def _update(prob: _Problem, inc, i: int, err: float):
    c = prob.cands
    if prob.lat_ok[i] and prob.error_ok(err):
        k = prob.keys.key(float(c.latency_s[i]), err, int(prob.rank[i]))
        if k < inc[0]:
            return (k, c.scheme(i), float(c.latency_s[i]), err)
    return inc


def _exhaustive(prob: _Problem, ev: Evaluator, config: SearchConfig):
    inc = prob.initial_incumbent()
    evaluated: dict[int, float] = {}
    for i in np.flatnonzero(prob.lat_ok):
        evaluated[int(i)] = err = ev.evaluate(prob.cands.scheme(int(i)))
        inc = _update(prob, inc, int(i), err)
    return inc, evaluated, True


def _random(prob: _Problem, ev: Evaluator, config: SearchConfig):
    inc = prob.initial_incumbent()
    rng = np.random.default_rng(config.seed)
    idx = np.flatnonzero(prob.lat_ok)
    evaluated: dict[int, float] = {}
    for i in rng.permutation(idx)[: config.random_budget]:
        evaluated[int(i)] = err = ev.evaluate(prob.cands.scheme(int(i)))
        inc = _update(prob, inc, int(i), err)
    return inc, evaluated, len(idx) <= config.random_budget


class _Grid:
    """Per-partition (C, B) grids for dominance sums and bounds."""

    def __init__(self, cands: CandidateSet):
        self.p, self.c, self.b = cands.partition, cands.channels, cands.bits
        self.shape = (len(cands.conv_channels), max(cands.conv_channels, default=1) + 1, MAX_BITS + 1)

    def scatter(self, idx: np.ndarray, values: np.ndarray, fill: float) -> np.ndarray:
        g = np.full(self.shape, fill)
        g[self.p[idx], self.c[idx], self.b[idx]] = values
        return g

    def lower_bounds(self, idx: np.ndarray, err: np.ndarray) -> np.ndarray:
        """Per candidate: the largest error among evaluated schemes that dominate it."""
        g = self.scatter(idx, err, -np.inf)
        g = np.maximum.accumulate(g[:, ::-1, :], axis=1)[:, ::-1, :]
        g = np.maximum.accumulate(g[:, :, ::-1], axis=2)[:, :, ::-1]
        return g[self.p, self.c, self.b]

    def upper_bounds(self, idx: np.ndarray, err: np.ndarray) -> np.ndarray:
        """Per candidate: the smallest error among evaluated schemes it dominates."""
        g = self.scatter(idx, err, np.inf)
        g = np.minimum.accumulate(g, axis=1)
        g = np.minimum.accumulate(g, axis=2)
        return g[self.p, self.c, self.b]

    def dominated_sums(self, mask: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Per candidate: total weight of the `mask` candidates it dominates (itself included)."""
        g = np.zeros(self.shape)
        np.add.at(g, (self.p[mask], self.c[mask], self.b[mask]), weight[mask])
        g = g.cumsum(axis=1).cumsum(axis=2)
        return g[self.p, self.c, self.b]


def _features(cands: CandidateSet, idx: np.ndarray) -> np.ndarray:
    """Normalised (P, C, B) in [0, 1]^3: P linear, C as log fraction of the conv's width."""
    n_p = max(len(cands.conv_channels) - 1, 1)
    cmax = np.array(cands.conv_channels, dtype=float)[cands.partition[idx]]
    return np.column_stack([
        cands.partition[idx] / n_p,
        np.log(cands.channels[idx]) / np.log(np.maximum(cmax, 2.0)),
        2.0 ** (1 - cands.bits[idx])])   # relative quantisation step: 1 at 1 bit, 1/128 at 8


class _GP:
    """A scikit-learn GP on log(error) with a Matern kernel; refits hyper-parameters sometimes."""

    def __init__(self, seed: int):
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        self._gpr_cls = GaussianProcessRegressor
        self.kernel = (ConstantKernel(1.0, (1e-2, 1e2))
                       * Matern(length_scale=[0.3, 0.3, 0.3], length_scale_bounds=(0.03, 10.0), nu=0.5)
                       + WhiteKernel(1e-3, (1e-6, 1e-1)))
        self.seed = seed
        self.fits = 0

    def predict(self, x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of log(error) at x."""
        # hyper-parameters re-optimised at 2, 4, 8, ... points; otherwise kept (fast refit)
        optimise = len(x_train) & (len(x_train) - 1) == 0
        gpr = self._gpr_cls(kernel=self.kernel, normalize_y=False, random_state=self.seed,
                            optimizer="fmin_l_bfgs_b" if optimise else None)
        # optimistic prior: far from the data the GP reverts to the best error seen, not to
        # the mean (the search samples many bad schemes; a mean prior would call unexplored
        # regions hopeless and let the probabilistic stop close them unseen)
        lo, scale = y_train.min(), max(float(y_train.std()), 1e-9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gpr.fit(x_train, (y_train - lo) / scale)
            mu, sd = gpr.predict(x, return_std=True)
        mu, sd = mu * scale + lo, sd * scale
        self.kernel = gpr.kernel_
        self.fits += 1
        return mu, np.maximum(sd, 1e-6)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr
    return ndtr(z)


def _norm_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _beat_threshold(prob: _Problem, inc, latency_s: np.ndarray, tie_tol: float) -> np.ndarray:
    """Per candidate: the error it must stay under to beat the incumbent (or meet the bound).

    Objective.MIN_LATENCY: the accuracy bound (every open candidate is faster). MIN_ERROR:
    the incumbent's error, widened by the tie tolerance for faster candidates (an equal error
    wins a tie) and narrowed for slower ones; infinite while there is no incumbent.
    """
    if prob.req.objective is Objective.MIN_LATENCY:
        return np.full(len(latency_s), prob.base_error + prob.req.max_accuracy_loss + LOSS_TOL)
    if inc[1] is None:
        return np.full(len(latency_s), math.inf)
    return np.where(latency_s < inc[2], inc[3] + tie_tol, inc[3] - tie_tol)


def _bayes(prob: _Problem, ev: Evaluator, config: SearchConfig):
    cands, keys = prob.cands, prob.keys
    n = len(cands)
    grid = _Grid(cands)
    gp: _GP | None = None   # built on first use (importing scikit-learn takes a while)
    inc = prob.initial_incumbent()
    evaluated: dict[int, float] = {}
    eval_mask = np.zeros(n, dtype=bool)
    min_latency = prob.req.objective is Objective.MIN_LATENCY
    eps = config.noise_margin
    bar = None
    if config.progress:
        from tqdm import tqdm
        bar = tqdm(desc="search", unit="eval")
    proven = True
    tiebreak = np.random.default_rng(config.seed).permutation(n)   # equal scores: seeded order
    while True:
        idx = np.flatnonzero(eval_mask)
        errs = np.array([evaluated[int(i)] for i in idx])
        lb = grid.lower_bounds(idx, errs) - eps if len(idx) else np.full(n, -np.inf)
        ub = grid.upper_bounds(idx, errs) + eps if len(idx) else np.full(n, np.inf)
        # open: unevaluated, may meet the latency and accuracy bounds, may beat the incumbent
        open_ = (~eval_mask & prob.lat_ok & prob.error_ok(lb)
                 & keys.better(cands.latency_s, lb, prob.rank, inc[0]))
        n_open = int(open_.sum())
        if n_open == 0:
            break
        if config.max_evaluations is not None and len(evaluated) >= config.max_evaluations:
            proven = False
            break
        o = np.flatnonzero(open_)
        # GP belief about log(error) of open candidates
        if len(idx) >= 2:
            gp = gp or _GP(config.seed)
            mu, sd = gp.predict(_features(cands, idx), np.log(errs), _features(cands, o))
        else:
            mu, sd = np.zeros(len(o)), np.full(len(o), np.inf)
        # probability that evaluating it makes it the incumbent: its error under `target`
        target = _beat_threshold(prob, inc, cands.latency_s[o], config.tie_tolerance)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.log(np.maximum(target, 1e-300)) - mu) / sd
            z = np.where(target <= 0, -np.inf, np.where(np.isinf(target), np.inf, z))
            z = np.nan_to_num(z, nan=0.0, posinf=np.inf, neginf=-np.inf)
            p_imp = np.clip(_norm_cdf(z), 0.0, 1.0) if len(idx) >= 2 else np.full(len(o), 0.5)
        if min_latency:
            p_imp = np.where(ub[o] <= target, 1.0, p_imp)  # certain to pass
        if (not config.prove and len(evaluated) >= config.min_evaluations
                and p_imp.sum() < 1.0 - config.confidence):
            proven = False   # the GP is confident that nothing open beats the incumbent
            break
        # candidates closed in each outcome, weighted by how likely they would otherwise
        # need work: in accuracy mode, only those faster than the predicted optimum do
        if min_latency:
            likely = p_imp >= 0.5
            l_hat = cands.latency_s[o][likely].min() if likely.any() else (inc[2] or math.inf)
            w = np.where(cands.latency_s[o] < l_hat, 1.0, config.slow_weight)
        else:
            w = np.ones(len(o))
        weight = np.zeros(n)
        weight[o] = w
        dom = grid.dominated_sums(open_, weight)[o] - w         # bounded from below if it misses
        if min_latency:
            order_l = np.argsort(cands.latency_s[o], kind="stable")
            suffix = np.cumsum(w[order_l][::-1])[::-1]           # weight of open at least as slow
            pos = np.searchsorted(cands.latency_s[o][order_l], cands.latency_s[o], side="left")
            closed_if_imp = suffix[pos] - w
        else:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                a = z
                m_log = np.where(np.isfinite(a) & (p_imp > 1e-12),
                                 mu - sd * _norm_pdf(a) / np.maximum(_norm_cdf(a), 1e-300), mu)
            lb_sorted = np.sort(lb[o])
            closed_if_imp = len(o) - np.searchsorted(lb_sorted, np.exp(m_log), side="left")
            closed_if_imp = np.maximum(closed_if_imp - 1, 0)
        score = 1.0 + p_imp * closed_if_imp + (1.0 - p_imp) * dom
        if not config.prove:
            score = p_imp * score   # aim at what may beat the incumbent: that decides the stop
        # choice: best score, then faster, then a seeded order (the only use of --seed here)
        order = np.lexsort((tiebreak[o], cands.latency_s[o], -score))
        i = int(o[order[0]])
        err = ev.evaluate(cands.scheme(i))
        evaluated[i] = err
        eval_mask[i] = True
        inc = _update(prob, inc, i, err)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(open=n_open - 1, best=str(inc[1]))
        log.debug("evaluated %s err=%.4f open=%d incumbent=%s", cands.scheme(i), err, n_open, inc[1])
    if bar is not None:
        bar.close()
    return inc, evaluated, proven
