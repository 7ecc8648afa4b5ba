"""Timing helper shared by the profiler, the cloud's tail timing and the device's encoder timing."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeats` timed runs after `warmup` untimed ones
    (time.perf_counter); 0.0 when repeats is 0."""
    if repeats <= 0:
        return 0.0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
