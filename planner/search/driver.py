"""The one search driver: every strategy is a chooser of the next look-up in one loop.

- Bayesian, default: a GP stop (planner.search.acquisition) over the open schemes.
- Bayesian with `prove`: the fastest contender next, until none is left (the cheapest proof:
  in accuracy mode every scheme faster than the optimum must be looked up anyway, and
  fastest-first looks up nothing else; in latency mode every feasible scheme must be).
- Exhaustive and random: the baselines, through the same look-ups and incumbent.
Whatever stopped it, the result says what is proven (planner.search.bounds.Standing).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from planner.latency import LatencyModel
from planner.search.acquisition import belief, expected_reduction
from planner.search.bounds import Grid, Standing, contenders, standing
from planner.search.evaluators import Evaluator
from planner.search.gp import GP, features
from planner.search.problem import CandidateSet, Problem, Requirement, SearchConfig, Strategy
from planner.search.result import SearchResult, Stop

log = logging.getLogger(__name__)


class _Run:
    """One search in progress: the look-ups so far and the incumbent."""

    def __init__(self, prob: Problem, evaluator: Evaluator, config: SearchConfig):
        self.prob, self.evaluator, self.config = prob, evaluator, config
        self.grid = Grid(prob.cands)
        self.incumbent = prob.initial_incumbent()
        self.order: list[int] = []      # candidate indices looked up, in order
        self.errors: list[float] = []   # their errors
        self.unevaluated = np.ones(len(prob.cands), dtype=bool)
        self.miss_probability: float | None = None
        self._gp: GP | None = None      # built on first use (importing scikit-learn takes a while)

    def evaluate(self, i: int) -> float:
        err = self.evaluator.evaluate(self.prob.cands.scheme(i))
        self.order.append(i)
        self.errors.append(err)
        self.unevaluated[i] = False
        self.incumbent = self.prob.offer(self.incumbent, i, err)
        log.debug("evaluated %s err=%.4f incumbent=%s", self.prob.cands.scheme(i), err, self.incumbent.scheme)
        return err

    def standing(self, close: bool) -> Standing:
        return standing(self.prob, self.incumbent, np.array(self.order, dtype=np.int64),
                        np.array(self.errors), self.grid, self.config.noise_margin if close else None)

    def gp_predict(self, idx: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """GP mean and std of log(error) at candidates idx; (None, None) under 2 look-ups."""
        if len(self.order) < 2:
            return None, None
        self._gp = self._gp or GP(self.config.seed)
        cands = self.prob.cands
        return self._gp.predict(features(cands, np.array(self.order)), np.log(self.errors), features(cands, idx))


Chooser = Callable[[_Run], "int | Stop"]   # the next candidate to look up, or why to stop


def _exhaustive(prob: Problem, config: SearchConfig) -> Chooser:
    todo = iter(np.flatnonzero(prob.lat_ok).tolist())
    return lambda run: next(todo, Stop.EXHAUSTIVE)


def _random(prob: Problem, config: SearchConfig) -> Chooser:
    rng = np.random.default_rng(config.seed)
    todo = iter(rng.permutation(np.flatnonzero(prob.lat_ok))[: config.random_budget].tolist())
    return lambda run: next(todo, Stop.BUDGET)


def _proof(prob: Problem, config: SearchConfig) -> Chooser:
    by_latency = np.lexsort((prob.rank, prob.cands.latency_s))

    def choose(run: _Run) -> int | Stop:
        left = contenders(prob, run.incumbent, run.unevaluated)[by_latency]
        return int(by_latency[np.argmax(left)]) if left.any() else Stop.PROOF
    return choose


def _gp_stop(prob: Problem, config: SearchConfig) -> Chooser:
    tiebreak = np.random.default_rng(config.seed).permutation(len(prob.cands))   # equal scores: seeded

    def choose(run: _Run) -> int | Stop:
        st = run.standing(close=True)
        o = np.flatnonzero(st.open)
        if not len(o):
            run.miss_probability = 0.0
            return Stop.BOUNDS if st.contender.any() else Stop.PROOF
        b = belief(prob, st, run.incumbent, o, config, *run.gp_predict(o))
        run.miss_probability = float(b.p.sum())
        if len(run.order) >= config.min_evaluations and run.miss_probability < 1.0 - config.confidence:
            return Stop.CONFIDENCE
        score = expected_reduction(prob, st, b, run.grid, config)
        # best score, then faster, then a seeded order (the only use of --seed here)
        return int(o[np.lexsort((tiebreak[o], prob.cands.latency_s[o], -score))[0]])
    return choose


def search(model: LatencyModel, cands: CandidateSet, req: Requirement, evaluator: Evaluator,
           config: SearchConfig = SearchConfig(), strategy: Strategy = Strategy.BAYES) -> SearchResult:
    """Plan one requirement on one latency model; see planner.search."""
    t0 = time.perf_counter()
    prob = Problem(model, cands, req, evaluator.base_error)
    run = _Run(prob, evaluator, config)
    make = {Strategy.EXHAUSTIVE: _exhaustive, Strategy.RANDOM: _random,
            Strategy.BAYES: _proof if config.prove else _gp_stop}[strategy]
    choose = make(prob, config)
    start = evaluator.evaluations
    bar = None
    if config.progress:
        from tqdm import tqdm
        bar = tqdm(desc="search", unit="eval")
    while True:
        if config.max_evaluations is not None and len(run.order) >= config.max_evaluations:
            stop = Stop.BUDGET   # (PROOF after all when nothing is left: see _result)
            break
        choice = choose(run)
        if isinstance(choice, Stop):
            stop = choice
            break
        run.evaluate(choice)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(best=str(run.incumbent.scheme))
    if bar is not None:
        bar.close()
    return _result(run, strategy, stop, evaluator.evaluations - start, time.perf_counter() - t0)


def _result(run: _Run, strategy: Strategy, stop: Stop, evaluations: int, wall_s: float) -> SearchResult:
    prob, inc = run.prob, run.incumbent
    st = run.standing(close=strategy is Strategy.BAYES and not run.config.prove)
    proven = st.unproven_candidates == 0
    if proven and stop is Stop.BUDGET:
        stop = Stop.PROOF   # the budget ran out just as nothing was left
    found = inc.scheme is not None
    cands = prob.cands
    stages = prob.model.stages(inc.scheme) if found else None
    return SearchResult(
        requirement=prob.req, strategy=strategy, scheme=inc.scheme,
        latency_s=inc.latency_s if found else None, top1_error=inc.top1_error if found else None,
        accuracy_loss=inc.top1_error - prob.base_error if found else None,
        evaluations=evaluations, candidates=len(cands), single_end_s=prob.single_end_s,
        best_single_end=str(prob.best_single[0]), proven=proven, wall_s=wall_s, stop=stop,
        reason="" if found else prob.infeasible_reason(run.errors),
        unproven_candidates=st.unproven_candidates, unproven_margin=st.unproven_margin(),
        miss_probability=run.miss_probability if stop in (Stop.CONFIDENCE, Stop.BOUNDS) else None,
        cost=prob.model.cost.value, pipeline_depth=prob.model.depth,
        stages_s=None if stages is None else {"device": stages.device_s, "uplink": stages.uplink_s,
                                              "rtt": stages.rtt_s, "cloud": stages.cloud_s},
        frame_latency_s=None if stages is None else stages.total_s,
        evaluated=[(str(cands.scheme(i)), e) for i, e in zip(run.order, run.errors)],
        closed=[str(cands.scheme(i)) for i in np.flatnonzero(st.closed)])
