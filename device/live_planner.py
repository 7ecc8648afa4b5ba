"""Planning on the device: the accuracies it may plan with (the cloud's bank, or database
rows), and the planner's search re-run when the link estimate leaves a hysteresis band."""
from __future__ import annotations

import logging
import os
import time
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

# Plans may take at most this fraction of the device's CPU (a plan over 552 seed rows: ~6 ms of
# CPU here, so every 0.3 s on a whole core, every 3 s under a 0.1 quota).  Re-planning on every
# round-trip move cost more: under a quota a frame's round trip carries the quota's stalls and
# re-planned fmnist-vgg every ~3 frames on the link bench (0.1 quota, 1 Mbps; ~8 ms a plan).
PLAN_CPU_BUDGET = 0.02


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
    current: SearchResult | None = None
    plans: int = 0
    from_bank: bool = False           # accuracies are the cloud's bank's, learnt from its server info
    objective: Cost = Cost.LATENCY    # plan for a frame's latency or the stream's frame rate
    pipeline_depth: int = 1           # frames in flight the throughput objective assumes
    cpu_share: float = 1.0            # fraction of one CPU the device has (its quota; 1: unlimited)
    plan_cpu_budget: float = PLAN_CPU_BUDGET   # plans' share of that CPU, at most
    planned_at: float | None = None   # time.monotonic() of the current plan
    plan_cpu_s: float = 0.0           # CPU seconds the latest plan took

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

    def needs_plan(self, bandwidth_mbps: float, now: float | None = None) -> bool:
        """A new plan when the bandwidth estimate left the hysteresis band of the planned one
        (at once), and otherwise as often as `plan_cpu_budget` of the device's CPU allows: the
        plan then follows everything else the device learns as frames go (the round trip, zstd
        ratios, its CPU per call and between frames).  A first plan, made before any frame,
        would otherwise stand for the whole run (vgg16_bn at 2 Mbps under a 0.1 quota,
        2026-12-06: 20 frames of 0:4:5 where the profile at the end priced cloud-only 17% faster).
        `now`: time.monotonic() (tests pass their own)."""
        if self.current is None or self.planned_mbps is None:
            return True
        lo, hi = self.planned_mbps / (1 + self.hysteresis), self.planned_mbps * (1 + self.hysteresis)
        if not lo <= bandwidth_mbps <= hi:
            return True
        return self.replan_due(now)

    def replan_due(self, now: float | None = None) -> bool:
        """Whether enough time has passed since the latest plan for another to keep plans within
        `plan_cpu_budget` of the device's CPU: the plan's CPU seconds / (budget x share).  The
        second plan follows the first at once: the first's CPU is mostly one-time set-up (imports,
        caches), which would otherwise hold the next plan back for tens of seconds under a quota
        (fmnist-vgg, 0.1 quota, 2026-12-06: one plan in 600 frames, device-only at 1.6x cloud-only)."""
        if self.planned_at is None or self.plans < 2:
            return True      # the first plan paid the search's one-time set-up (11 ms against 1.4)
        wait_s = self.plan_cpu_s / max(self.plan_cpu_budget * self.cpu_share, 1e-12)
        return (time.monotonic() if now is None else now) - self.planned_at >= wait_s

    def plan(self, profile: Profile, bandwidth_mbps: float) -> SearchResult:
        cpu0 = time.thread_time()
        lat = LatencyModel.from_profile(profile, bandwidth_mbps, cost=self.objective, depth=self.pipeline_depth)
        cands = build_candidates(lat, Space.DB, self.errors)
        result = search(lat, cands, self.requirement.build(lat), DBEvaluator(self.errors, self.base_error),
                        SearchConfig(seed=self.seed), self.strategy)
        self.current, self.planned_mbps = result, bandwidth_mbps
        self.plans += 1
        self.planned_at, self.plan_cpu_s = time.monotonic(), time.thread_time() - cpu0
        return result

    def scheme(self) -> Scheme:
        """The planned scheme; when nothing is feasible, the faster single end."""
        assert self.current is not None
        if self.current.scheme is not None:
            return self.current.scheme
        return Scheme.parse(self.current.best_single_end)
