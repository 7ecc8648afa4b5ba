"""Predicted against measured: the planner's latency model on the live profile, per scheme.

Each scheme's prediction is `planner.latency.LatencyModel` on the profile the `auto` run wrote,
at the bandwidth the device measured; for a (P, B) or an image ratio the auto run never sent,
the ratio is the one that scheme's own frames showed (what the device learns from its first
frame), and the row says so (`bytes_source`).
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from common.codec import packed_bytes


@dataclass(frozen=True)
class SchemeRow:
    scheme: str                  # as asked (auto: the live choice)
    ran: str                     # the scheme most frames ran with
    images: int
    measured_p50_s: float        # median end to end on the device
    measured_mean_s: float       # mean end to end: what the prediction is compared with
    predicted_s: float | None    # LatencyModel on the live profile at the measured bandwidth
    rel_error: float | None      # |pred - meas| / meas
    wire_bytes_mean: float
    predicted_bytes: int | None
    bytes_source: str            # "live profile" | "this scheme's frames" | "-"
    fallbacks: int
    scheme_counts: dict = field(default_factory=dict)
    head_s_mean: float = 0.0
    encode_s_mean: float = 0.0
    rtt_s_mean: float = 0.0
    tail_s_mean: float = 0.0
    cpu_s_per_frame: float | None = None     # the device process's CPU seconds per frame, measured
    predicted_cpu_s: float | None = None     # the model's device CPU per frame (a cycle's, loop included)
    plans: int | None = None                 # plans the live planner made (auto)
    cpu_throttling: dict | None = None       # the device cgroup's CFS periods and throttling over the run
    measured_cycle_s: float | None = None    # wall seconds per frame of the run (1 / throughput_fps):
                                             # under a quota it holds every stall, wherever it fell
    predicted_cycle_s: float | None = None   # the model's: max(latency, CPU per frame / quota share)


def learned_ratio(frames: list[dict], scheme, part, side_per_ch: int, header: int) -> float | None:
    """zstd ratio of a split scheme as the device would learn it from these frames' bytes."""
    packed = packed_bytes(scheme.channels * part.height * part.width, scheme.bits)
    sent = [f["wire_bytes"] for f in frames if f.get("wire_bytes") and not f.get("fallback")]
    if not sent or packed == 0:
        return None
    return max(1e-6, (statistics.fmean(sent) - scheme.channels * side_per_ch - header) / packed)


def predict(profile, scheme_name: str, frames: list[dict], bandwidth_mbps: float,
            image_ratio_learned: bool, cost=None, depth: int = 1, with_cpu: bool = False):
    """(seconds, bytes, where the byte ratio came from) for one scheme; seconds are its latency,
    or with `cost` (a planner.latency.Cost) what that cost prices at `depth` frames in flight;
    `with_cpu` appends the device CPU seconds per frame the model prices (None without a quota)
    and the seconds per frame of a sustained stream (a frame, or the CPU bound when slower)."""
    from planner.latency import Cost, LatencyModel
    from planner.profile import CodecProfile
    from planner.scheme import Mode, Scheme
    scheme = Scheme.parse(scheme_name)
    source = "-"
    if scheme.mode is Mode.CLOUD_ONLY:
        source = "live profile"
        sent = [f["wire_bytes"] for f in frames if f.get("wire_bytes") and not f.get("fallback")]
        if not image_ratio_learned and sent:
            profile = dataclasses.replace(profile, cloud_only_upload_bytes=round(statistics.fmean(sent)))
            source = "this scheme's frames"
    elif scheme.is_split:
        source = "live profile"
        if profile.codec_entry(scheme.partition, scheme.bits) is None:
            r = learned_ratio(frames, scheme, profile.partition(scheme.partition),
                              profile.side_bytes_per_channel, profile.header_bytes)
            if r is not None:
                profile = dataclasses.replace(
                    profile, codec=(*profile.codec, CodecProfile(scheme.partition, scheme.bits, r)))
                source = "this scheme's frames"
            else:
                source = "ratio 1 (no frames)"
    lat = LatencyModel.from_profile(profile, bandwidth_mbps, cost=cost or Cost.LATENCY, depth=depth)
    out = (lat.cost_s(scheme), lat.wire_bytes(scheme), source)
    if not with_cpu:
        return out
    cpu, b = profile.device_cpu, lat.breakdown(scheme)
    return (*out, None if cpu is None else b.cpu_bound_s * cpu.share, max(b.total_s, b.cpu_bound_s))


def row_of(scheme: str, frames: list[dict], summary: dict, profile, bandwidth_mbps: float | None,
           image_ratio_learned: bool) -> SchemeRow:
    ran = summary["scheme"]
    pred = nbytes = None
    source = "-"
    pred_cpu = pred_cycle = None
    if profile is not None and bandwidth_mbps:
        pred, nbytes, source, pred_cpu, pred_cycle = predict(profile, ran, [f for f in frames if f["scheme"] == ran],
                                                 bandwidth_mbps, image_ratio_learned, with_cpu=True)
    meas = summary["latency_s"]["mean"]   # a sustained stream's per-frame cost, as the profile measures it
    return SchemeRow(scheme, ran, summary["images"], summary["latency_s"]["p50"], meas, pred,
                     None if pred is None else abs(pred - meas) / meas, summary["wire_bytes_mean"], nbytes,
                     source, summary["fallbacks"], summary["scheme_counts"], summary.get("head_s_mean", 0.0),
                     summary.get("encode_s_mean", 0.0), summary.get("rtt_s_mean", 0.0),
                     summary.get("tail_s_mean", 0.0), summary.get("cpu_s_per_frame"), pred_cpu,
                     summary.get("plans"), summary.get("cpu_throttling"),
                     1 / summary["throughput_fps"] if summary.get("throughput_fps") else None, pred_cycle)
