"""tbf (and netem) arithmetic: what the device->cloud direction looks like, as tc arguments.

tbf parameters, chosen for rates from ~0.05 to a few Mbps:
- burst: the bucket must hold one whole frame (MTU 1500 + 14 bytes Ethernet header) or tbf
  cannot send it; larger buckets let that many bytes out at line speed after an idle period,
  which inflates short transfers (at 0.05 Mbps = 6250 B/s a 16 KB bucket would be 2.6 s of
  "free" link).  So burst = max(1600 B, rate / 100 Hz): one frame plus slack, and never less
  than one timer tick at HZ=100 worth of bytes (the classic tbf rule; with HZ=250 and
  hrtimers, at <= 2 Mbps the one-frame floor decides).
- latency (queue depth = rate * latency + burst): two seconds of traffic (at least 8 frames).
  Deeper queues avoid drops for whole messages at >= 0.5 Mbps, but at 0.05 Mbps a queue that
  holds the whole initial window (10 frames = 2.4 s) makes TCP time out spuriously and
  resend; two seconds does best at both ends (the measurements behind this choice are in
  docs/benchmarks-notes.md).  The project's traffic is one gRPC connection with one request
  in flight, so the queue is empty when a request starts and whatever it does not hold waits
  in the socket buffer instead.
- netem (delay, loss) is the root with tbf as its child (`parent 1:1`), the arrangement the
  Linux Foundation netem guide gives for "delay + rate": packets are delayed first, then paced
  at the rate, so the queueing delay of tbf adds to the fixed delay instead of being hidden in
  it.  Loss is applied before the rate limiter (a lost packet costs no link time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

FRAME_BYTES = 1514                # MTU 1500 + Ethernet header: what tbf charges per full packet
TCP_PAYLOAD_PER_FRAME = 1448      # 1500 - 20 (IPv4) - 32 (TCP with timestamps)
MIN_BURST_BYTES = 1600            # one full frame plus slack
TIMER_HZ_FLOOR = 100              # burst >= one tick of bytes at HZ=100 (worst common HZ)
MIN_QUEUE_BYTES = 8 * FRAME_BYTES # queue at least 8 full frames...
QUEUE_S = 2.0                     # ...or two seconds of traffic, whichever is larger
NETEM_LIMIT_PACKETS = 10_000      # netem's own queue: everything in flight during the delay


@dataclass(frozen=True)
class TbfShape:
    """What the device->cloud direction looks like; tc arguments derive from it."""
    rate_mbps: float          # tbf rate, 10^6 bit/s, counted on whole Ethernet frames
    delay_ms: float = 0.0     # netem fixed one-way delay (0: no netem)
    loss_pct: float = 0.0     # netem random loss, percent of packets (0: no netem)

    def __post_init__(self) -> None:
        if not (self.rate_mbps > 0 and math.isfinite(self.rate_mbps)):
            raise ValueError(f"expected rate_mbps > 0, got {self.rate_mbps!r}")
        if not (0 <= self.delay_ms < 60_000):
            raise ValueError(f"expected 0 <= delay_ms < 60000, got {self.delay_ms!r}")
        if not (0 <= self.loss_pct < 100):
            raise ValueError(f"expected 0 <= loss_pct < 100, got {self.loss_pct!r}")

    @property
    def rate_bytes_per_s(self) -> float:
        return self.rate_mbps * 1e6 / 8

    @property
    def rate_bit(self) -> int:
        return max(1, round(self.rate_mbps * 1e6))       # tc "bit" = bit/s, SI

    @property
    def burst_bytes(self) -> int:
        return max(MIN_BURST_BYTES, math.ceil(self.rate_bytes_per_s / TIMER_HZ_FLOOR))

    @property
    def queue_bytes(self) -> int:
        return max(MIN_QUEUE_BYTES, math.ceil(self.rate_bytes_per_s * QUEUE_S))

    @property
    def latency_ms(self) -> int:
        """tbf `latency`: the time the queue (beyond the bucket) takes to drain at the rate."""
        return max(1, math.ceil((self.queue_bytes - self.burst_bytes) / self.rate_bytes_per_s * 1e3))

    @property
    def uses_netem(self) -> bool:
        return self.delay_ms > 0 or self.loss_pct > 0

    @property
    def expected_goodput_mbps(self) -> float:
        """TCP payload rate of a bulk transfer: full frames carry 1448 of 1514 bytes."""
        return self.rate_mbps * TCP_PAYLOAD_PER_FRAME / FRAME_BYTES

    def tbf_args(self) -> list[str]:
        return ["tbf", "rate", f"{self.rate_bit}bit", "burst", str(self.burst_bytes),
                "latency", f"{self.latency_ms}ms"]

    def netem_args(self) -> list[str]:
        args = ["netem"]
        if self.delay_ms > 0:
            args += ["delay", f"{self.delay_ms:g}ms"]
        if self.loss_pct > 0:
            args += ["loss", f"{self.loss_pct:g}%"]
        return args + ["limit", str(NETEM_LIMIT_PACKETS)]
