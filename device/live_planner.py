"""Planning on the device: the accuracies it may plan with (the cloud's bank, or database
rows), and the planner's search re-run when the link estimate leaves a hysteresis band."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from planner.accuracy_db import AccuracyDBError, load_view
from planner.latency import Cost, LatencyModel
from planner.profile import Profile
from planner.registry import BuilderKind, get_spec
from planner.requirement import RequirementSpec
from planner.scheme import Scheme
from planner.search import DBEvaluator, SearchConfig, SearchResult, Space, Strategy, build_candidates, search
from protos.coinfer.v1 import coinfer_pb2 as pb

log = logging.getLogger(__name__)

RTT_REPLAN_MIN_S = 0.005   # a round-trip change smaller than this never triggers a new plan


def runnable_errors(db_path: str | os.PathLike, model: str, dataset: str, recipe_prefix: str = "ft0-"
                    ) -> tuple[dict[Scheme, float], float]:
    """Errors of the schemes this device and cloud can run, and the base error.

    Without fine-tuned artifacts both sides run the unmodified network, which is what an
    evaluation with no fine-tuning measures (recipe `ft0-...`): only those rows count.
    """
    try:
        view = load_view([db_path], model, dataset, recipe=recipe_prefix)
    except AccuracyDBError as e:
        hint = (f"; build them with `coinfer-plan evaluate-grid --model {model} --finetune-epochs 0`"
                if recipe_prefix == "ft0-" else "")
        spec = get_spec(model)
        if spec.builder is not BuilderKind.VGG_CFG and spec.dataset is None:   # no rows of its own to build
            hint = (f"; {model} is a torchvision-graph model without dataset-trained accuracy rows here: "
                    "give --db FILE with its rows, or a fixed P:C:B scheme")
        raise ValueError(f"{e}{hint}") from e
    return view.errors, view.base_error


def bank_errors(info: pb.ModelInfo) -> tuple[dict[Scheme, float], float]:
    """Errors of the schemes the cloud's bank holds (GetServerInfo), and their base error:
    what a device that keeps its network can run with a fine-tuned tail."""
    return {Scheme.parse(b.scheme): b.top1_error for b in info.bank}, info.base_top1_error


@dataclass
class LivePlanner:
    """Plans with the planner's search; re-plans when bandwidth leaves the hysteresis band."""

    errors: dict[Scheme, float]
    base_error: float
    requirement: RequirementSpec
    hysteresis: float = 0.25          # re-plan when bandwidth moves beyond x(1 +- h) of the planned one
    # every accuracy the device can plan with is already in memory, so looking them all up is
    # exact (proven) and cheap: 1.8 ms for the seed's 552 vgg16_bn rows at 0.5 Mbps, where the
    # GP strategy spent 1.1 s (20 look-ups; x10 under a 0.1 CPU quota, between two frames)
    strategy: Strategy = Strategy.EXHAUSTIVE
    seed: int = 0
    planned_mbps: float | None = None
    planned_rtt_s: float | None = None  # the base round trip the current plan was made for
    current: SearchResult | None = None
    plans: int = 0
    from_bank: bool = False           # accuracies are the cloud's bank's, learnt from its server info
    objective: Cost = Cost.LATENCY    # plan for a frame's latency or the stream's frame rate
    pipeline_depth: int = 1           # frames in flight the throughput objective assumes

    def use_server_info(self, info: pb.ModelInfo) -> None:
        """With `from_bank`: plan over the schemes the cloud's bank really holds (and both single
        ends), with their recorded fine-tuned accuracies; the next frame re-plans."""
        if not self.from_bank:
            return
        self.errors, self.base_error = bank_errors(info)
        if not self.errors:
            log.warning("the cloud holds no bank of fine-tuned tails for %s: planning over the single ends "
                        "only (plan over database rows with --recipe PREFIX)", info.name)
        self.current = self.planned_mbps = None

    def needs_plan(self, bandwidth_mbps: float, rtt_s: float | None = None) -> bool:
        """A new plan when the bandwidth, or the base round trip, left the hysteresis band of
        the planned one (the round trip only when it also moved by RTT_REPLAN_MIN_S: on a LAN
        it wobbles by fractions of a millisecond, which moves no choice)."""
        if self.current is None or self.planned_mbps is None:
            return True
        lo, hi = self.planned_mbps / (1 + self.hysteresis), self.planned_mbps * (1 + self.hysteresis)
        if not lo <= bandwidth_mbps <= hi:
            return True
        if rtt_s is None or self.planned_rtt_s is None:
            return False
        moved = abs(rtt_s - self.planned_rtt_s)
        return moved >= RTT_REPLAN_MIN_S and not (
            self.planned_rtt_s / (1 + self.hysteresis) <= rtt_s <= self.planned_rtt_s * (1 + self.hysteresis))

    def plan(self, profile: Profile, bandwidth_mbps: float) -> SearchResult:
        lat = LatencyModel.from_profile(profile, bandwidth_mbps, cost=self.objective, depth=self.pipeline_depth)
        cands = build_candidates(lat, Space.DB, self.errors)
        result = search(lat, cands, self.requirement.build(lat), DBEvaluator(self.errors, self.base_error),
                        SearchConfig(seed=self.seed), self.strategy)
        self.current, self.planned_mbps, self.planned_rtt_s = result, bandwidth_mbps, profile.rtt_s
        self.plans += 1
        return result

    def scheme(self) -> Scheme:
        """The planned scheme; when nothing is feasible, the faster single end."""
        assert self.current is not None
        if self.current.scheme is not None:
            return self.current.scheme
        return Scheme.parse(self.current.best_single_end)
