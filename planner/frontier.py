"""The latency/accuracy Pareto frontier of recorded schemes, as rows and as a PNG plot."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from planner.accuracy_db import AccuracyView
from planner.latency import LatencyModel
from planner.profile import Profile
from planner.scheme import CLOUD_ONLY, DEVICE_ONLY, Scheme
from planner.search import CandidateSet, Space, build_candidates


@dataclass(frozen=True)
class FrontierPoint:
    scheme: Scheme
    latency_s: float      # predicted, s
    top1_error: float     # fraction
    accuracy_loss: float  # top1_error - base error


def pareto_frontier(model: LatencyModel, view: AccuracyView) -> tuple[list[FrontierPoint], list[FrontierPoint]]:
    """(frontier, all points): no frontier point is both slower and less accurate than another.

    Single-end schemes take part with the base error. Sorted by latency; among equal
    (latency, error) the first in P:C:B order is kept.
    """
    cands: CandidateSet = build_candidates(model, Space.DB, view.errors)
    pts = [FrontierPoint(cands.scheme(i), float(cands.latency_s[i]), view.errors[cands.scheme(i)],
                         view.errors[cands.scheme(i)] - view.base_error) for i in range(len(cands))]
    for s in (DEVICE_ONLY, CLOUD_ONLY):
        pts.append(FrontierPoint(s, model.latency_s(s), view.base_error, 0.0))
    order = sorted(range(len(pts)), key=lambda i: (pts[i].latency_s, pts[i].top1_error, i))
    frontier: list[FrontierPoint] = []
    best = np.inf
    for i in order:
        if pts[i].top1_error < best:
            frontier.append(pts[i])
            best = pts[i].top1_error
    return frontier, [pts[i] for i in order]


def plot_frontier(frontier: list[FrontierPoint], points: list[FrontierPoint], model: LatencyModel,
                  path: str | os.PathLike, title: str = "") -> Path:
    """Write a PNG: all recorded schemes, the frontier, and the single-end latencies."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    split = [p for p in points if p.scheme.is_split]
    ax.scatter([p.latency_s for p in split], [100 * p.accuracy_loss for p in split], s=8,
               color="0.7", label="recorded schemes")
    ax.step([p.latency_s for p in frontier], [100 * p.accuracy_loss for p in frontier], where="post",
            color="C0", lw=1.5, marker="o", ms=4, label="Pareto frontier")
    for p in frontier[:12]:
        ax.annotate(str(p.scheme), (p.latency_s, 100 * p.accuracy_loss), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    for s, colour in ((DEVICE_ONLY, "C3"), (CLOUD_ONLY, "C2")):
        t = model.latency_s(s)
        ax.axvline(t, color=colour, ls="--", lw=1)
        ax.annotate(f"{s} {t:.2f} s", (t, 0.03), xycoords=("data", "axes fraction"), rotation=90,
                    va="bottom", ha="right", fontsize=8, color=colour)
    low = min(p.accuracy_loss for p in points)
    ax.set_ylim(bottom=100 * min(low, 0.0) - 0.1)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel(f"predicted latency, s (uplink {model.link.bandwidth_mbps:g} Mbps)")
    ax.set_ylabel("top-1 accuracy loss, percentage points")
    ax.set_title(title or f"{model.profile.model}: latency / accuracy frontier")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def with_device_speed(profile: Profile, speed: float) -> Profile:
    """The profile of a device `speed` times as fast (0.1: a tenth of the measured device):
    its head, full-model and encode seconds divided by `speed`; link and cloud unchanged."""
    if not speed > 0:
        raise ValueError(f"expected a device speed > 0, got {speed}")
    parts = tuple(dataclasses.replace(p, device_head_s=p.device_head_s / speed) for p in profile.partitions)
    codec = tuple(dataclasses.replace(c, encode_s=c.encode_s / speed) for c in profile.codec)
    return dataclasses.replace(profile, partitions=parts, codec=codec,
                               device_full_model_s=profile.device_full_model_s / speed,
                               encode_s_per_value=profile.encode_s_per_value / speed,
                               encode_s_fixed=profile.encode_s_fixed / speed)


def frontier_schemes(profile: Profile, view: AccuracyView, bandwidths_mbps: Sequence[float],
                     device_speeds: Sequence[float]) -> dict[Scheme, int]:
    """Split schemes on the latency/accuracy frontier somewhere in a range of operating
    points (uplink bandwidth x device speed), with the number of points where each is."""
    hits: dict[Scheme, int] = {}
    for bw in bandwidths_mbps:
        for speed in device_speeds:
            frontier, _ = pareto_frontier(LatencyModel.from_profile(with_device_speed(profile, speed), bw), view)
            for p in frontier:
                if p.scheme.is_split:
                    hits[p.scheme] = hits.get(p.scheme, 0) + 1
    return hits


def schemes_beating_single_ends(profile: Profile, schemes: Sequence[Scheme], bandwidths_mbps: Sequence[float],
                                device_speeds: Sequence[float], margin: float = 0.0) -> dict[Scheme, float]:
    """Split schemes predicted faster than both single ends at some operating point (uplink
    bandwidth x device speed), with their best speed-up over the faster single end there
    (`margin`: also those within that fraction of it, for the latency model's error).

    A split scheme is never more accurate than the unmodified network (both single ends), so
    only these can be on the latency/accuracy frontier anywhere in that range, whatever
    accuracy fine-tuning gives them: the schemes a bank must hold to cover it."""
    best: dict[Scheme, float] = {}
    for bw in bandwidths_mbps:
        for speed in device_speeds:
            lat = LatencyModel.from_profile(with_device_speed(profile, speed), bw)
            single = lat.best_single_end()[1]
            for s in schemes:
                ratio = single / lat.latency_s(s)
                if ratio > 1.0 - margin and ratio > best.get(s, 0.0):
                    best[s] = ratio
    return best
