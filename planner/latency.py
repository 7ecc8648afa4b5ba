"""The latency model: predicted end-to-end seconds of a scheme on a profiled system.

    split P:C:B   device_head_s[P] + encode_s + wire_bytes*8/(Mbps*1e6) + rtt_s + decode_s + cloud_tail_s[P]
    device-only   device full model
    cloud-only    cloud_only_upload_bytes*8/(Mbps*1e6) + rtt_s + cloud full model

    wire_bytes = ceil(ceil(C*H*W*B/8) * ratio[P,B]) + C*side_bytes_per_channel + header_bytes

A stream with K frames in flight (coinfer-device --pipeline-depth K) overlaps the stages
of consecutive frames: the device (head + encode), the uplink (wire bytes at the link's
rate) and the cloud (decode + tail); the base round trip is time in flight, held by no
stage.  `Stages` splits the same terms the latency sums (they add up to it exactly), and
its period, max(slowest stage, latency / K), is the seconds between answers a full pipe
sustains: with K = 1 the latency itself.  A frame in a full pipe waits behind the K - 1
before it: its latency, queueing included, is K periods.  `Cost` says which of the two a
plan minimises; the search (planner.search) asks the model for `cost_s`.

Under a CPU quota (a profile with `device_cpu`), the device's part is priced from CPU
seconds: a frame's head and encode run at full speed while the CFS period's budget lasts
and at the quota's share after it, wall(c) = max(c, c/share - period*(1 - share)); and no
sustained stream of frames can spend more device CPU per second than the share allows, so
a frame takes at least (head + encode + call CPU) / share however short its other stages
(the difference is added to the device's part).  Network waits refill the budget only up to
one period's worth.  Without `device_cpu` the device's wall seconds are used as they are.

`ratio` is the measured zstd ratio when the profile has one and the bytes model uses it,
else 1; side and header bytes are 0 unless modelled.  encode_s and decode_s are the
profile's seconds per value sent times C*H*W when it has them (a live profile), else the
codec table's seconds at (P, B), else 0. With the seed's profile this is the
seed's model in SI units (shared/seed/README.md).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from common.codec import packed_bytes
from planner.profile import Profile
from planner.scheme import CLOUD_ONLY, DEVICE_ONLY, Mode, Scheme

# Bytes on the uplink per message beyond its application bytes, which no bulk goodput figure
# accounts for: the last (partial) packet's Ethernet + IPv4 + TCP-with-timestamps headers
# (66), the TCP acknowledgement of the answer (66) and the HTTP/2 frame + gRPC message prefix
# (9 + 5).  Measured on the tbf of the stream bench: 1:8:4 frames of 678 B put ~800 B through it.
MESSAGE_OVERHEAD_BYTES = 66 + 66 + 9 + 5


class LatencyModelError(ValueError):
    """A scheme or link that the latency model cannot price."""


class Cost(enum.Enum):
    """What a plan's seconds are (coinfer-device and coinfer-plan --objective)."""

    LATENCY = "latency"         # one frame from image to answer, alone on the link
    THROUGHPUT = "throughput"   # seconds between answers of a stream with `depth` frames in flight


@dataclass(frozen=True)
class Stages:
    """A scheme's seconds per frame in each pipeline stage; they sum to its latency."""

    device_s: float     # head + encode (device-only: the whole network)
    uplink_s: float     # wire bytes at the link's rate
    rtt_s: float        # base round trip (and the answer's way back): in flight, no stage's time
    cloud_s: float      # decode + tail (cloud-only: the whole network)
    cpu_bound_s: float = 0.0   # device CPU per frame / quota share: no stream runs faster (0: no quota)
    message_s: float = 0.0     # link time of a message's own overhead (TCP/IP headers, the answer's
                               # acknowledgement, HTTP/2 + gRPC framing): measured inside rtt_s, but it
                               # occupies the link, so a stream's uplink stage is uplink_s + message_s

    @property
    def total_s(self) -> float:
        """The latency: the same sum, in the same order, as LatencyBreakdown.total_s."""
        return self.device_s + (self.uplink_s + self.rtt_s) + self.cloud_s

    @property
    def bottleneck_s(self) -> float:
        """The slowest stage: no stream answers faster than one frame per this."""
        return max(self.device_s, self.uplink_s + self.message_s, self.cloud_s, self.cpu_bound_s)

    def period_s(self, depth: int) -> float:
        """Seconds between answers with `depth` frames in flight: the slowest stage, or a whole
        round of `depth` frames when too few are in flight to keep every stage busy."""
        return max(self.bottleneck_s, self.total_s / depth)

    def stream_latency_s(self, depth: int) -> float:
        """A frame's latency in a full pipe, queueing behind the `depth - 1` before it included."""
        return depth * self.period_s(depth)


@dataclass(frozen=True)
class LinkModel:
    """The device-to-cloud uplink."""

    bandwidth_mbps: float   # uplink rate, 10^6 bit/s
    rtt_s: float = 0.0      # round-trip time added to every message sent, s

    def __post_init__(self) -> None:
        if not (self.bandwidth_mbps > 0 and math.isfinite(self.bandwidth_mbps)):
            raise LatencyModelError(f"expected bandwidth_mbps > 0, got {self.bandwidth_mbps}")
        if not self.rtt_s >= 0:
            raise LatencyModelError(f"expected rtt_s >= 0, got {self.rtt_s}")

    def uplink_s(self, nbytes: int | float) -> float:
        """Seconds `nbytes` occupy the uplink: bytes*8/(Mbps*1e6)."""
        return nbytes * 8.0 / (self.bandwidth_mbps * 1e6)

    def transfer_s(self, nbytes: int | float) -> float:
        """Seconds to send `nbytes` and hear back: bytes*8/(Mbps*1e6) + rtt."""
        return self.uplink_s(nbytes) + self.rtt_s

    @property
    def message_s(self) -> float:
        """Link seconds of one message's overhead bytes (`MESSAGE_OVERHEAD_BYTES`), at most the
        round trip that measured them: a small message's round trip includes its headers and
        the acknowledgement of its answer on the link, which frames in a stream queue behind."""
        return min(self.rtt_s, self.uplink_s(MESSAGE_OVERHEAD_BYTES))


@dataclass(frozen=True)
class BytesModel:
    """How many bytes a split scheme puts on the wire."""

    use_codec_ratio: bool = True   # scale packed bytes by the profile's zstd ratio at (P, B)
    model_side_data: bool = True   # add the profile's per-channel side and header bytes


@dataclass(frozen=True)
class LatencyBreakdown:
    scheme: Scheme
    device_s: float       # device compute (+ encode), s
    transfer_s: float     # uplink (+ rtt), s
    cloud_s: float        # cloud compute (+ decode), s
    wire_bytes: int       # application bytes sent per image
    rtt_s: float = 0.0    # the base round trip within transfer_s, s
    cpu_bound_s: float = 0.0   # device CPU per frame / quota share (0: no quota modelled)

    @property
    def total_s(self) -> float:
        return self.device_s + self.transfer_s + self.cloud_s


@dataclass(frozen=True)
class LatencyModel:
    """Predicts a scheme's latency from a profile, a link and a bytes model."""

    profile: Profile
    link: LinkModel
    bytes_model: BytesModel = BytesModel()
    cost: Cost = Cost.LATENCY   # what cost_s prices (and the search minimises or bounds)
    depth: int = 1              # frames in flight, for Cost.THROUGHPUT

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise LatencyModelError(f"expected pipeline depth >= 1, got {self.depth}")

    @classmethod
    def from_profile(cls, profile: Profile, bandwidth_mbps: float, rtt_s: float | None = None,
                     bytes_model: BytesModel = BytesModel(), cost: Cost = Cost.LATENCY,
                     depth: int = 1) -> "LatencyModel":
        """rtt_s None: the profile's measured RTT, or 0 when it has none (the seed)."""
        rtt = rtt_s if rtt_s is not None else (profile.rtt_s or 0.0)
        return cls(profile, LinkModel(bandwidth_mbps, rtt), bytes_model, cost, depth)

    # -- bytes ---------------------------------------------------------------------------
    def _ratio(self, p: int, bits: int) -> float:
        if not self.bytes_model.use_codec_ratio:
            return 1.0
        c = self.profile.codec_entry(p, bits)
        return c.zstd_ratio if c else 1.0

    def _side(self) -> tuple[int, int]:
        if not self.bytes_model.model_side_data:
            return 0, 0
        return self.profile.side_bytes_per_channel, self.profile.header_bytes

    def wire_bytes(self, scheme: Scheme) -> int:
        """Bytes sent device -> cloud per image."""
        if scheme.mode is Mode.DEVICE_ONLY:
            return 0
        if scheme.mode is Mode.CLOUD_ONLY:
            return self.profile.cloud_only_upload_bytes
        part = self._split_part(scheme)
        packed = packed_bytes(scheme.channels * part.height * part.width, scheme.bits)
        per_ch, header = self._side()
        return math.ceil(packed * self._ratio(scheme.partition, scheme.bits)) + scheme.channels * per_ch + header

    def _split_part(self, scheme: Scheme):
        part = self.profile.partition(scheme.partition)
        if scheme.channels > part.conv_channels:
            raise LatencyModelError(
                f"expected C <= {part.conv_channels} at partition {scheme.partition}, got {scheme.channels}")
        return part

    # -- seconds ---------------------------------------------------------------------------
    # -- the device under a CPU quota ------------------------------------------------------
    def _wall(self, cpu_s):
        """Wall seconds of `cpu_s` device CPU seconds in one frame (scalar or array): full speed
        while the period's budget lasts, the quota's share after it."""
        c = self.profile.device_cpu
        return np.maximum(cpu_s, cpu_s / c.share - c.period_s * (1.0 - c.share))

    def _quota(self, work_cpu_s, calls: int, rest_s):
        """(device wall s, CPU bound s) of a frame whose device work is `work_cpu_s` CPU
        seconds, with `calls` cloud calls and `rest_s` seconds on the link and the cloud.

        A stream of such frames cycles no faster than its CPU (the frame's, and the loop's
        between frames) over the share; the stall that makes up the difference falls where the
        budget runs out, in the frame for the frame's share of that CPU."""
        c = self.profile.device_cpu
        wall = self._wall(work_cpu_s)
        frame_cpu = work_cpu_s + calls * c.call_cpu_s
        cycle_cpu = frame_cpu + c.loop_cpu_s
        bound = cycle_cpu / c.share
        stall = np.maximum(0.0, bound - (wall + rest_s + c.loop_cpu_s))
        return wall + stall * (frame_cpu / np.maximum(cycle_cpu, 1e-12)), bound

    def breakdown(self, scheme: Scheme) -> LatencyBreakdown:
        prof = self.profile
        cpu = prof.device_cpu
        if scheme.mode is Mode.DEVICE_ONLY:
            if cpu is None:
                return LatencyBreakdown(scheme, prof.device_full_model_s, 0.0, 0.0, 0)
            device, bound = self._quota(cpu.full_model_cpu_s, 0, 0.0)
            return LatencyBreakdown(scheme, float(device), 0.0, 0.0, 0, 0.0, float(bound))
        nbytes = self.wire_bytes(scheme)
        if scheme.mode is Mode.CLOUD_ONLY:
            transfer = self.link.transfer_s(nbytes)
            device, bound = (0.0, 0.0) if cpu is None else self._quota(0.0, 1, transfer + prof.cloud_full_model_s)
            return LatencyBreakdown(scheme, float(device), transfer, prof.cloud_full_model_s, nbytes,
                                    self.link.rtt_s, float(bound))
        part = self._split_part(scheme)
        codec = prof.codec_entry(scheme.partition, scheme.bits)
        enc, dec = (codec.encode_s, codec.decode_s) if codec else (0.0, 0.0)
        values = scheme.channels * part.height * part.width
        per_value = prof.encode_s_per_value > 0 or prof.encode_s_fixed > 0
        enc = prof.encode_s_fixed + prof.encode_s_per_value * values if per_value else enc
        dec = prof.decode_s_per_value * values if prof.decode_s_per_value > 0 else dec
        transfer, cloud = self.link.transfer_s(nbytes), dec + part.cloud_tail_s
        if cpu is None:
            return LatencyBreakdown(scheme, part.device_head_s + enc, transfer, cloud, nbytes, self.link.rtt_s)
        device, bound = self._quota(cpu.head_cpu_s[scheme.partition] + enc, 1, transfer + cloud)
        return LatencyBreakdown(scheme, float(device), transfer, cloud, nbytes, self.link.rtt_s, float(bound))

    def latency_s(self, scheme: Scheme) -> float:
        return self.breakdown(scheme).total_s

    def stages(self, scheme: Scheme) -> Stages:
        """The scheme's pipeline stages, from the terms of its latency (they sum to it)."""
        b = self.breakdown(scheme)
        if b.wire_bytes == 0:                     # device-only: nothing on the link
            return Stages(b.device_s, 0.0, 0.0, b.cloud_s, b.cpu_bound_s)
        return Stages(b.device_s, self.link.uplink_s(b.wire_bytes), b.rtt_s, b.cloud_s, b.cpu_bound_s,
                      self.link.message_s)

    def cost_s(self, scheme: Scheme) -> float:
        """The scheme's seconds under `cost`: its latency, or its stream period at `depth`."""
        if self.cost is Cost.LATENCY:
            return self.latency_s(scheme)
        return self.stages(scheme).period_s(self.depth)

    def single_end_costs(self) -> dict[Scheme, float]:
        return {DEVICE_ONLY: self.cost_s(DEVICE_ONLY), CLOUD_ONLY: self.cost_s(CLOUD_ONLY)}

    def best_single_end_cost(self) -> tuple[Scheme, float]:
        """The cheaper single-end scheme under `cost` and its seconds (device-only on ties)."""
        d, c = self.cost_s(DEVICE_ONLY), self.cost_s(CLOUD_ONLY)
        return (DEVICE_ONLY, d) if d <= c else (CLOUD_ONLY, c)

    def single_end(self) -> dict[Scheme, float]:
        return {DEVICE_ONLY: self.latency_s(DEVICE_ONLY), CLOUD_ONLY: self.latency_s(CLOUD_ONLY)}

    def best_single_end(self) -> tuple[Scheme, float]:
        """The faster single-end scheme and its seconds (device-only on ties)."""
        d, c = self.latency_s(DEVICE_ONLY), self.latency_s(CLOUD_ONLY)
        return (DEVICE_ONLY, d) if d <= c else (CLOUD_ONLY, c)

    def split_latencies(self, partition: np.ndarray, channels: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Vectorised latency_s of split schemes given as integer arrays P, C, B; seconds."""
        device, uplink, rtt, cloud, _ = self._split_stages(partition, channels, bits)
        # same association as LatencyBreakdown.total_s, so scalar and vector agree bit for bit
        return device + (uplink + rtt) + cloud

    def split_costs(self, partition: np.ndarray, channels: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Vectorised cost_s of split schemes; seconds (equal to cost_s bit for bit)."""
        if self.cost is Cost.LATENCY:
            return self.split_latencies(partition, channels, bits)
        device, uplink, rtt, cloud, bound = self._split_stages(partition, channels, bits)
        total = device + (uplink + rtt) + cloud
        link = uplink + self.link.message_s
        return np.maximum(np.maximum(np.maximum(np.maximum(device, link), cloud), bound), total / self.depth)

    def _split_stages(self, partition: np.ndarray, channels: np.ndarray, bits: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray | float]:
        """(device, uplink, rtt, cloud, CPU bound) seconds of split schemes P, C, B (Stages,
        vectorised)."""
        partition = np.asarray(partition, dtype=np.int64)
        channels = np.asarray(channels, dtype=np.int64)
        bits = np.asarray(bits, dtype=np.int64)
        parts = self.profile.partitions
        if partition.size and (partition.min() < 0 or partition.max() >= len(parts)):
            raise LatencyModelError(f"expected partitions in 0..{len(parts) - 1}")
        hw = np.array([q.height * q.width for q in parts], dtype=np.int64)
        head = np.array([q.device_head_s for q in parts])
        tail = np.array([q.cloud_tail_s for q in parts])
        ratio = np.ones((len(parts), 9))
        enc = np.zeros((len(parts), 9))
        dec = np.zeros((len(parts), 9))
        for c in self.profile.codec:
            if 0 <= c.partition < len(parts) and 1 <= c.bits <= 8:
                if self.bytes_model.use_codec_ratio:
                    ratio[c.partition, c.bits] = c.zstd_ratio
                enc[c.partition, c.bits] = c.encode_s
                dec[c.partition, c.bits] = c.decode_s
        values = channels * hw[partition]
        enc_s = (self.profile.encode_s_fixed + values * self.profile.encode_s_per_value
                 if self.profile.encode_s_per_value > 0 or self.profile.encode_s_fixed > 0
                 else enc[partition, bits])
        dec_s = (values * self.profile.decode_s_per_value if self.profile.decode_s_per_value > 0
                 else dec[partition, bits])
        packed = packed_bytes(channels * hw[partition], bits)
        per_ch, header = self._side()
        scaled = packed * ratio[partition, bits]
        nbytes = np.where(ratio[partition, bits] == 1.0, packed, np.ceil(scaled)) + channels * per_ch + header
        uplink = nbytes * 8.0 / (self.link.bandwidth_mbps * 1e6)
        cloud = dec_s + tail[partition]
        cpu = self.profile.device_cpu
        if cpu is None:
            return head[partition] + enc_s, uplink, self.link.rtt_s, cloud, 0.0
        device, bound = self._quota(np.array(cpu.head_cpu_s)[partition] + enc_s, 1, (uplink + self.link.rtt_s) + cloud)
        return device, uplink, self.link.rtt_s, cloud, bound
