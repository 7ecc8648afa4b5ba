"""The device's own compute, measured where it runs: head seconds per partition and the
encoder's seconds per value, as a sustained stream sees them, cached per model, weights,
machine, input size and CPU quota."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import codec
from device.heads import Heads

log = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "opt-coinfer" / "profiles"


@dataclass(frozen=True)
class DeviceTimes:
    head_s: tuple[float, ...]    # mean seconds from uint8 image to the cut at each P (sustained)
    full_model_s: float          # mean seconds for the whole network (sustained, cold caches as the heads)
    repeats: int
    cpu_quota: float | None      # fraction of one CPU the process was confined to
    encode_s_per_value: float = 0.0   # quantize + pack + zstd seconds per feature-map value
    encode_s_fixed: float = 0.0       # ... plus these seconds per frame (cold caches)
    head_cpu_s: tuple[float, ...] = ()   # mean CPU seconds from uint8 image to each cut (what a quota rations)
    full_model_cpu_s: float = 0.0        # mean CPU seconds of the whole network (cold caches)
    # the whole network with warm caches, as a device-only stream runs it (nothing between its
    # frames): mean seconds and CPU seconds, what device-only is priced at (0: not measured)
    device_only_s: float = 0.0
    device_only_cpu_s: float = 0.0


DEVICE_TIMES_METHOD = "sustained-mean-cold/6"   # part of the cache key: a new method re-measures
ENCODE_BITS = 4                  # bits of the start-up encode timing (cost varies little with B)


EVICT_BYTES = 32 << 20          # more than a device's last-level cache


class CacheEvictor:
    """Touches a buffer larger than the last-level cache: between frames a device's loop (gRPC,
    results, the next image) leaves its caches cold, and timing passes back to back with warm
    caches underprices small networks 1.5-3x (fmnist-vgg P1 head, torch: 0.49 ms warm, 0.79 ms
    cold; encode 0.14 vs 0.30 ms)."""

    def __init__(self, nbytes: int = EVICT_BYTES):
        self._buf = np.zeros(nbytes // 8, dtype=np.float64)

    def __call__(self) -> None:
        self._buf += 1.0


def measure_encode_s(maps: list[tuple[int, np.ndarray]], evict: CacheEvictor, repeats: int = 5
                     ) -> tuple[float, float]:
    """(fixed seconds per frame, seconds per value) of the encoder at ENCODE_BITS bits, cold
    caches: one channel of each cut's map prices the fixed part (per-channel parameters, the
    zstd frame, the message), all of its channels the per-value part.  Before the device has
    sent a frame, this prices the encode of any P:C:B."""
    def cold(fn) -> float:
        def run():
            evict()
            t0 = time.thread_time()
            fn()
            return time.thread_time() - t0
        return statistics.median(run() for _ in range(repeats))
    one = np.zeros(1, dtype=np.uint32)
    small, large, dvalues = [], [], 0
    for p, fm in maps:        # per cut: one channel, then all of them; the difference is per value
        small.append(cold(lambda: codec.feature_map_to_proto(codec.encode_feature_map(fm, p, one, ENCODE_BITS))))
        large.append(cold(lambda: codec.feature_map_to_proto(codec.encode_feature_map(fm, p, None, ENCODE_BITS))))
        dvalues += fm.size - fm.shape[1] * fm.shape[2]
    if not maps:
        return 0.0, 0.0
    # small maps: the difference can drown in timing noise, and then the cost is the fixed part
    slope = max(0.0, (sum(large) - sum(small)) / dvalues) if dvalues else 0.0
    return statistics.median(small), slope


def measure_device_times(heads: Heads, repeats: int = 5, warmup: int = 1, cpu_quota: float | None = None,
                         min_seconds: float = 1.0, max_repeats: int = 2000) -> DeviceTimes:
    """Per-frame seconds of a sustained stream: passes back to back, at least `repeats` of
    them and at least `min_seconds` in all (at most `max_repeats`); one pass gives the head
    time of every cut, and each is the mean over the passes; then the encoder's seconds per
    value.

    The mean, not the median: under a CPU quota (CFS bandwidth control, 10 ms per 100 ms
    at 0.1) a short pass runs at full speed while the period's budget lasts and the next
    one waits for the period to end, so a 2 ms network shows 2 ms in most passes and
    ~20 ms per frame on average: the device's cost per frame is the average.
    """
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (heads.spec.in_channels, *heads.input_hw), dtype=np.uint8)
    evict = CacheEvictor()
    runs = []
    started = None
    r = 0
    last = None
    while True:
        if r == warmup:
            started = time.perf_counter()
        evict()                    # each pass starts cold, as a frame after the loop's other work
        last = heads.timed_pass(image)
        if r >= warmup:
            runs.append(last)
            if len(runs) >= max_repeats or (
                    len(runs) >= repeats and time.perf_counter() - started >= min_seconds):
                break
        r += 1
    n = range(len(heads.partitions))
    fixed, per_value = measure_encode_s(last.maps, evict)
    warm_s, warm_cpu_s = measure_full_model_warm(heads, image, len(runs))
    return DeviceTimes(tuple(statistics.fmean(run.head_s[p] for run in runs) for p in n),
                       statistics.fmean(run.full_s for run in runs), len(runs), cpu_quota, per_value, fixed,
                       tuple(statistics.fmean(run.head_cpu_s[p] for run in runs) for p in n),
                       statistics.fmean(run.full_cpu_s for run in runs), warm_s, warm_cpu_s)


def measure_full_model_warm(heads: Heads, image: np.ndarray, repeats: int) -> tuple[float, float]:
    """(mean wall s, mean CPU s) of the whole network, passes back to back with warm caches:
    a device-only stream does nothing between frames but take the next image and print a
    line, so its caches stay warm (fmnist-vgg under a 0.1 quota on the link bench: 2.1-2.5 ms
    CPU per device-only frame, where cold passes price 2.9 ms, 28 ms a frame instead of ~21).
    The split frames' gRPC call in between is what makes the cold price right for heads."""
    heads.logits(image)                   # warm-up
    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.thread_time()
        heads.logits(image)
        cpus.append(time.thread_time() - c0)
        walls.append(time.perf_counter() - t0)
    return statistics.fmean(walls), statistics.fmean(cpus)


def cached_device_times(heads: Heads, cpu_quota: float | None, repeats: int = 5,
                        refresh: bool = False) -> DeviceTimes:
    """Measured once per model, weights, runtime, machine, input size and quota; then read back."""
    key = json.dumps([DEVICE_TIMES_METHOD, heads.spec.name, heads.weights_sha256 or "random",
                      list(heads.input_hw), cpu_quota, platform.node(), platform.machine(), heads.version])
    path = CACHE_DIR / f"{heads.spec.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file() and not refresh:
        try:
            d = json.loads(path.read_text())
            return DeviceTimes(tuple(d["head_s"]), d["full_model_s"], d["repeats"], d["cpu_quota"],
                               float(d["encode_s_per_value"]), float(d["encode_s_fixed"]), tuple(d["head_cpu_s"]),
                               float(d["full_model_cpu_s"]), float(d["device_only_s"]),
                               float(d["device_only_cpu_s"]))
        except (ValueError, KeyError, TypeError):
            log.warning("re-measuring: device-time cache %s is unreadable or from an older version", path)
    times = measure_device_times(heads, repeats, cpu_quota=cpu_quota)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "head_s": times.head_s, "full_model_s": times.full_model_s,
                                    "repeats": times.repeats, "cpu_quota": times.cpu_quota,
                                    "encode_s_per_value": times.encode_s_per_value,
                                    "encode_s_fixed": times.encode_s_fixed,
                                    "head_cpu_s": times.head_cpu_s, "full_model_cpu_s": times.full_model_cpu_s,
                                    "device_only_s": times.device_only_s,
                                    "device_only_cpu_s": times.device_only_cpu_s}))
    except OSError as e:
        log.warning("cannot cache device times at %s: %s", path, e)
    return times
