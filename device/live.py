"""Live measurements and planning on the device: what it measures, it plans with.

- device head seconds per partition, measured here (one timed pass gives every cut; the
  mean over passes back to back, a sustained stream's cost), cached per model, machine
  and CPU quota;
- the cloud's tail seconds per partition from its server-info reply;
- the link's bandwidth and round trip from Probe at start-up, then passively from every
  inference transfer (bytes over round trip minus cloud compute; short frames sample the
  round trip instead), smoothed;
- the zstd ratio per (partition, bits), learned from the frames actually sent.

`LiveState.profile()` turns all of it into a planner Profile (the project's format, which
`coinfer-plan` reads), and `LivePlanner` runs the planner's search on it, re-planning
only when the bandwidth estimate leaves a hysteresis band.
"""
from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from planner.accuracy_db import AccuracyDBError, load_view
from planner.latency import LatencyModel
from planner.models import SplitCNN, partition_shapes
from common import codec
from common.timing import median_seconds
from planner.profile import CodecProfile, PartitionProfile, Profile, save_profile
from planner.scheme import Scheme
from planner.search import (DBEvaluator, Requirement, SearchConfig, SearchResult, Space, Strategy,
                            build_candidates, search)
from protos.coinfer.v1 import coinfer_pb2 as pb

log = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "opt-coinfer" / "profiles"
SIDE_BYTES_PER_CHANNEL = 8   # float32 offset + float32 scale per kept channel
HEADER_BYTES = 48            # request id, model name, shape fields: measured order of magnitude


# -- device compute ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceTimes:
    head_s: tuple[float, ...]    # mean seconds from uint8 image to the cut at each P (sustained)
    full_model_s: float          # mean seconds for the whole network (sustained)
    repeats: int
    cpu_quota: float | None      # fraction of one CPU the process was confined to
    encode_s_per_value: float = 0.0   # quantize + pack + zstd seconds per feature-map value


DEVICE_TIMES_METHOD = "sustained-mean/2"   # part of the cache key: a new method re-measures
ENCODE_BITS = 4                  # bits of the start-up encode timing (cost varies little with B)


def measure_encode_s_per_value(maps: list[tuple[int, np.ndarray]], repeats: int = 3) -> float:
    """Median seconds to encode one value (all channels, ENCODE_BITS bits) of each cut's
    feature map in `maps` [(P, (C, H, W) array)], weighted by size: sum of seconds / sum of
    values.  Before the device has sent a frame, this prices the encode of any P:C:B."""
    seconds = sum(median_seconds(lambda: codec.encode_feature_map(fm, p, None, ENCODE_BITS), repeats, warmup=0)
                  for p, fm in maps)
    values = sum(fm.size for _, fm in maps)
    return seconds / values if values else 0.0


@torch.inference_mode()
def measure_device_times(model: SplitCNN, input_hw: tuple[int, int], repeats: int = 5,
                         warmup: int = 1, cpu_quota: float | None = None, min_seconds: float = 1.0,
                         max_repeats: int = 2000) -> DeviceTimes:
    """Per-frame seconds of a sustained stream: passes back to back, at least `repeats` of
    them and at least `min_seconds` in all (at most `max_repeats`); one pass gives the head
    time of every cut, and each is the mean over the passes; then the encoder's seconds per
    value.

    The mean, not the median: under a CPU quota (CFS bandwidth control, 10 ms per 100 ms
    at 0.1) a short pass runs at full speed while the period's budget lasts and the next
    one waits for the period to end, so a 2 ms network shows 2 ms in most passes and
    ~20 ms per frame on average: the device's cost per frame is the average.
    """
    ends = {p.feature_end: p.index for p in model.partitions}
    image = torch.randint(0, 256, (1, model.spec.in_channels, *input_hw), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    runs = []
    started = None
    r = 0
    while True:
        if r == warmup:
            started = time.perf_counter()
        marks = [0.0] * len(model.partitions)
        maps = []                  # the cuts' feature maps: the encoder is timed on the last pass's
        t0 = time.perf_counter()
        x = model.preprocess(image)
        for i, layer in enumerate(model.features):
            x = layer(x)
            if i + 1 in ends:
                marks[ends[i + 1]] = time.perf_counter() - t0
                maps.append((ends[i + 1], x[0]))
        model.classifier(torch.flatten(model.avgpool(x), 1))
        if r >= warmup:
            runs.append((marks, time.perf_counter() - t0))
            if len(runs) >= max_repeats or (
                    len(runs) >= repeats and time.perf_counter() - started >= min_seconds):
                break
        r += 1
    heads = tuple(statistics.fmean(m[p] for m, _ in runs) for p in range(len(model.partitions)))
    return DeviceTimes(heads, statistics.fmean(t for _, t in runs), len(runs), cpu_quota,
                       measure_encode_s_per_value([(p, fm.numpy()) for p, fm in maps]))


def cached_device_times(model: SplitCNN, model_key: str, input_hw: tuple[int, int],
                        cpu_quota: float | None, repeats: int = 5, refresh: bool = False) -> DeviceTimes:
    """Measured once per model, weights, machine, input size and quota; then read back."""
    key = json.dumps([DEVICE_TIMES_METHOD, model_key, list(input_hw), cpu_quota, platform.node(), platform.machine(),
                      torch.__version__, torch.get_num_threads()])
    path = CACHE_DIR / f"{model.spec.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file() and not refresh:
        try:
            d = json.loads(path.read_text())
            return DeviceTimes(tuple(d["head_s"]), d["full_model_s"], d["repeats"], d["cpu_quota"],
                               float(d["encode_s_per_value"]))
        except (ValueError, KeyError, TypeError):
            log.warning("re-measuring: device-time cache %s is unreadable or from an older version", path)
    times = measure_device_times(model, input_hw, repeats, cpu_quota=cpu_quota)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "head_s": times.head_s, "full_model_s": times.full_model_s,
                                    "repeats": times.repeats, "cpu_quota": times.cpu_quota,
                                    "encode_s_per_value": times.encode_s_per_value}))
    except OSError as e:
        log.warning("cannot cache device times at %s: %s", path, e)
    return times


# -- link --------------------------------------------------------------------------------------
@dataclass
class LinkEstimator:
    """Smoothed uplink bandwidth and round trip (exponentially weighted)."""

    alpha: float = 0.3                 # weight of a new bandwidth sample
    rtt_alpha: float = 0.1             # weight of a new RTT sample: frames sample it every time, and
                                       # under a CPU quota one in several waits a CFS period: keep ~10
    probe_alpha: float = 0.5           # weight of a probe's bandwidth and RTT: a deliberate, clean
                                       # measurement, made only while frames measure nothing
    min_passive_bytes: int = 1500      # shorter transfers say more about RTT than bandwidth
    bandwidth_mbps: float | None = None
    rtt_s: float | None = None
    samples: int = 0
    last_sample_at: float | None = None   # time.monotonic() of the latest bandwidth sample
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _mix(self, old: float | None, new: float, alpha: float | None = None) -> float:
        a = self.alpha if alpha is None else alpha
        return new if old is None else (1 - a) * old + a * new

    def add_rtt(self, rtt_s: float) -> None:
        with self._lock:
            self.rtt_s = self._mix(self.rtt_s, max(0.0, rtt_s), self.rtt_alpha)

    def add_transfer(self, up_bytes: int, seconds: float, alpha: float | None = None) -> None:
        """`up_bytes` took `seconds` on the wire beyond the base round trip."""
        if up_bytes <= 0 or seconds <= 0:
            return
        mbps = up_bytes * 8 / seconds / 1e6
        with self._lock:
            self.bandwidth_mbps = self._mix(self.bandwidth_mbps, mbps, alpha)
            self.samples += 1
            self.last_sample_at = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the latest bandwidth sample (infinite before the first)."""
        return math.inf if self.last_sample_at is None else time.monotonic() - self.last_sample_at

    def observe_inference(self, wire_bytes: int, rtt_s: float, server_s: float) -> None:
        """Passive sample from a frame.  A frame of `min_passive_bytes` or more samples the
        bandwidth: bytes over (round trip - cloud compute - base RTT).  A shorter one says
        more about the base RTT: round trip - cloud compute - its bytes at the current
        bandwidth.  That RTT is the one frames see, with the device's own per-call work
        (serialization, gRPC) at the device's sustained speed, which a few quick probes
        at start-up under-state on a CPU-quota'd device."""
        if self.rtt_s is None:
            return
        if wire_bytes >= self.min_passive_bytes:
            self.add_transfer(wire_bytes, rtt_s - server_s - self.rtt_s)
        elif self.bandwidth_mbps:
            self.add_rtt(rtt_s - server_s - wire_bytes * 8 / (self.bandwidth_mbps * 1e6))

    def probe(self, client, target_s: float = 0.25, max_bytes: int = 1 << 20) -> None:
        """Active measurement in bounded time on slow and fast links alike:

        1. probes growing from `target_s` worth at the current estimate (2 KiB at first)
           until one takes `target_s`: besides sizing the sample, they empty any token
           bucket a shaper or policer holds, whose first bytes pass at line rate (a
           tbf at 0.05 Mbps holds 1600 bytes: a sample taken with it full read 0.065);
        2. three tiny probes right behind, the quickest kept: the base round trip,
           including what a message's framing costs at the link's rate (~20 ms at
           0.05 Mbps: ~130 bytes of gRPC, HTTP/2 and TCP/IP headers);
        3. one more probe of the last size: the bandwidth sample is the quicker of the two
           probes of that size (the first only when a probe went before it), against
           that base.

        The caller keeps frames off the link and the CPU meanwhile (LiveSession probes
        between frames, on their thread): a probe queued behind an upload, or waiting for
        a quota'd CPU, inflates the base RTT, and every sample taken against that base
        then over-estimates the bandwidth."""
        nbytes = 2048 if self.bandwidth_mbps is None else int(self.bandwidth_mbps * 1e6 / 8 * target_s)
        nbytes = max(1024, min(max_bytes, nbytes))
        first_s, grown = math.inf, False
        while True:
            r = client.probe(nbytes, 1)
            if r.rtt_s - r.server_s >= target_s or nbytes >= max_bytes:
                if grown:                  # a probe went before it: no bucket left to ride on
                    first_s = r.rtt_s - r.server_s
                break
            nbytes, grown = min(max_bytes, nbytes * 4), True
        rtts = [client.probe(1, 1) for _ in range(3)]
        base = min(r.rtt_s - r.server_s for r in rtts)      # the least queued of the three
        with self._lock:
            self.rtt_s = base if self.rtt_s is None else self._mix(self.rtt_s, base, self.probe_alpha)
        r = client.probe(nbytes, 1)
        # the quicker of the two same-size probes (a stall, such as a CPU quota's period, only
        # adds time), unless the first was the round's first and may have ridden a full bucket
        self.add_transfer(nbytes, min(first_s, r.rtt_s - r.server_s) - base, self.probe_alpha)


# -- bytes -------------------------------------------------------------------------------------
def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else (1 - alpha) * old + alpha * new


@dataclass
class ByteRatios:
    """Per (partition, bits), from the frames actually sent: zstd bytes / packed bytes, and
    the device's encode and the cloud's decode seconds; over all frames, those seconds per
    value sent (C*H*W), which price any channel count."""

    alpha: float = 0.2
    ratios: dict[tuple[int, int], float] = field(default_factory=dict)
    encode_s: dict[tuple[int, int], float] = field(default_factory=dict)
    decode_s: dict[tuple[int, int], float] = field(default_factory=dict)
    encode_s_per_value: float | None = None
    decode_s_per_value: float | None = None
    image_ratio: float | None = None   # cloud-only: compressed / raw image bytes

    def observe(self, req: pb.InferRequest, encode_s: float | None = None, decode_s: float | None = None) -> None:
        kind = req.WhichOneof("input")
        if kind == "feature_map":
            fm = req.feature_map
            if fm.bits == 0:
                return   # lossless reference frames are not a scheme
            packed = codec.packed_bytes(fm.channels * fm.height * fm.width, fm.bits)
            if packed == 0:
                return
            key = (fm.partition, fm.bits)
            self.ratios[key] = _ewma(self.ratios.get(key), len(fm.payload) / packed, self.alpha)
            for table, value in ((self.encode_s, encode_s), (self.decode_s, decode_s)):
                if value is not None:
                    table[key] = _ewma(table.get(key), value, self.alpha)
            values = fm.channels * fm.height * fm.width
            if encode_s is not None:
                self.encode_s_per_value = _ewma(self.encode_s_per_value, encode_s / values, self.alpha)
            if decode_s is not None:
                self.decode_s_per_value = _ewma(self.decode_s_per_value, decode_s / values, self.alpha)
        elif kind == "image":
            raw = req.image.channels * req.image.height * req.image.width
            self.image_ratio = _ewma(self.image_ratio, len(req.image.payload) / raw, self.alpha)


# -- the live profile --------------------------------------------------------------------------
@dataclass
class LiveState:
    model_name: str
    model: SplitCNN
    input_hw: tuple[int, int]
    device: DeviceTimes
    server: pb.ModelInfo | None          # the cloud's model info; None until it has answered
    base_top1_error: float | None
    link: LinkEstimator = field(default_factory=LinkEstimator)
    bytes: ByteRatios = field(default_factory=ByteRatios)

    def profile(self) -> Profile:
        shapes = partition_shapes(self.model.spec, self.input_hw)
        parts = tuple(
            PartitionProfile(index=p.index, conv_channels=c, after_pooling=p.after_pooling, height=h, width=w,
                             device_head_s=self.device.head_s[p.index],
                             cloud_tail_s=self.server.partitions[p.index].cloud_tail_s)
            for p, (c, h, w) in zip(self.model.partitions, shapes))
        raw = self.model.spec.in_channels * self.input_hw[0] * self.input_hw[1]
        upload = math.ceil(raw * (self.bytes.image_ratio or 1.0)) + HEADER_BYTES
        b = self.bytes
        codec = tuple(CodecProfile(p, bits, r, b.encode_s.get((p, bits), 0.0), b.decode_s.get((p, bits), 0.0))
                      for (p, bits), r in sorted(b.ratios.items()))
        return Profile(
            model=self.model_name, dataset=self.model.spec.dataset, num_classes=self.model.num_classes,
            base_top1_error=self.base_top1_error, input_shape=(self.model.spec.in_channels, *self.input_hw),
            cloud_only_upload_bytes=upload, device_full_model_s=self.device.full_model_s,
            cloud_full_model_s=self.server.cloud_full_model_s, partitions=parts,
            device_hardware=f"{platform.node()} ({platform.machine()})"
                            + (f", CPU quota {self.device.cpu_quota:g}" if self.device.cpu_quota else ""),
            cloud_hardware="coinfer-cloud (server-info)", rtt_s=self.link.rtt_s, codec=codec,
            side_bytes_per_channel=SIDE_BYTES_PER_CHANNEL, header_bytes=HEADER_BYTES,
            encode_s_per_value=b.encode_s_per_value or self.device.encode_s_per_value,
            decode_s_per_value=b.decode_s_per_value or 0.0,
            measured={"bandwidth_mbps": self.link.bandwidth_mbps, "link_samples": self.link.samples,
                      "device_repeats": self.device.repeats, "source": "coinfer-device live"})

    def write_profile(self, path: str | os.PathLike) -> None:
        save_profile(self.profile(), path)


# -- planning ----------------------------------------------------------------------------------
class RequirementKind(enum.Enum):
    LATENCY_RATIO = "latency-ratio"      # latency <= R x best single-end latency
    MAX_LATENCY_S = "max-latency-s"      # latency <= S seconds
    MAX_ACCURACY_LOSS = "max-accuracy-loss"  # loss <= A


@dataclass(frozen=True)
class RequirementSpec:
    kind: RequirementKind
    value: float

    def build(self, lat: LatencyModel) -> Requirement:
        return {RequirementKind.LATENCY_RATIO: lambda: Requirement.latency_ratio(self.value, lat.best_single_end()[1]),
                RequirementKind.MAX_LATENCY_S: lambda: Requirement.latency_s(self.value),
                RequirementKind.MAX_ACCURACY_LOSS: lambda: Requirement.accuracy_loss(self.value)}[self.kind]()


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
        raise ValueError(f"{e}{hint}") from e
    return view.errors, view.base_error


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

    def needs_plan(self, bandwidth_mbps: float) -> bool:
        if self.current is None or self.planned_mbps is None:
            return True
        lo, hi = self.planned_mbps / (1 + self.hysteresis), self.planned_mbps * (1 + self.hysteresis)
        return not lo <= bandwidth_mbps <= hi

    def plan(self, profile: Profile, bandwidth_mbps: float) -> SearchResult:
        lat = LatencyModel.from_profile(profile, bandwidth_mbps)
        cands = build_candidates(lat, Space.DB, self.errors)
        result = search(lat, cands, self.requirement.build(lat), DBEvaluator(self.errors, self.base_error),
                        SearchConfig(seed=self.seed), self.strategy)
        self.current, self.planned_mbps = result, bandwidth_mbps
        self.plans += 1
        return result

    def scheme(self) -> Scheme:
        """The planned scheme; when nothing is feasible, the faster single end."""
        assert self.current is not None
        if self.current.scheme is not None:
            return self.current.scheme
        return Scheme.parse(self.current.best_single_end)
