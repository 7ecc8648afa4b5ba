"""The uplink as the device sees it: smoothed bandwidth and round trip, from probes and
from every frame's transfer."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field


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
