"""The latency/accuracy Pareto frontier of recorded schemes, as rows and as a PNG plot."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.accuracy_db import AccuracyView
from planner.latency import LatencyModel
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
