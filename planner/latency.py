"""The latency model: predicted end-to-end seconds of a scheme on a profiled system.

    split P:C:B   device_head_s[P] + encode_s + wire_bytes*8/(Mbps*1e6) + rtt_s + decode_s + cloud_tail_s[P]
    device-only   device full model
    cloud-only    cloud_only_upload_bytes*8/(Mbps*1e6) + rtt_s + cloud full model

    wire_bytes = ceil(ceil(C*H*W*B/8) * ratio[P,B]) + C*side_bytes_per_channel + header_bytes

`ratio` is the measured zstd ratio when the profile has one and the bytes model uses it,
else 1; side and header bytes are 0 unless modelled.  encode_s and decode_s are the
profile's seconds per value sent times C*H*W when it has them (a live profile), else the
codec table's seconds at (P, B), else 0. With the seed's profile this is the
seed's model in SI units (shared/seed/README.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.codec import packed_bytes
from planner.profile import Profile
from planner.scheme import CLOUD_ONLY, DEVICE_ONLY, Mode, Scheme


class LatencyModelError(ValueError):
    """A scheme or link that the latency model cannot price."""


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

    def transfer_s(self, nbytes: int | float) -> float:
        """Seconds to send `nbytes` and hear back: bytes*8/(Mbps*1e6) + rtt."""
        return nbytes * 8.0 / (self.bandwidth_mbps * 1e6) + self.rtt_s


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

    @property
    def total_s(self) -> float:
        return self.device_s + self.transfer_s + self.cloud_s


@dataclass(frozen=True)
class LatencyModel:
    """Predicts a scheme's latency from a profile, a link and a bytes model."""

    profile: Profile
    link: LinkModel
    bytes_model: BytesModel = BytesModel()

    @classmethod
    def from_profile(cls, profile: Profile, bandwidth_mbps: float, rtt_s: float | None = None,
                     bytes_model: BytesModel = BytesModel()) -> "LatencyModel":
        """rtt_s None: the profile's measured RTT, or 0 when it has none (the seed)."""
        rtt = rtt_s if rtt_s is not None else (profile.rtt_s or 0.0)
        return cls(profile, LinkModel(bandwidth_mbps, rtt), bytes_model)

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
    def breakdown(self, scheme: Scheme) -> LatencyBreakdown:
        prof = self.profile
        if scheme.mode is Mode.DEVICE_ONLY:
            return LatencyBreakdown(scheme, prof.device_full_model_s, 0.0, 0.0, 0)
        nbytes = self.wire_bytes(scheme)
        if scheme.mode is Mode.CLOUD_ONLY:
            return LatencyBreakdown(scheme, 0.0, self.link.transfer_s(nbytes), prof.cloud_full_model_s, nbytes)
        part = self._split_part(scheme)
        codec = prof.codec_entry(scheme.partition, scheme.bits)
        enc, dec = (codec.encode_s, codec.decode_s) if codec else (0.0, 0.0)
        values = scheme.channels * part.height * part.width
        enc = prof.encode_s_per_value * values if prof.encode_s_per_value > 0 else enc
        dec = prof.decode_s_per_value * values if prof.decode_s_per_value > 0 else dec
        return LatencyBreakdown(scheme, part.device_head_s + enc, self.link.transfer_s(nbytes),
                                dec + part.cloud_tail_s, nbytes)

    def latency_s(self, scheme: Scheme) -> float:
        return self.breakdown(scheme).total_s

    def single_end(self) -> dict[Scheme, float]:
        return {DEVICE_ONLY: self.latency_s(DEVICE_ONLY), CLOUD_ONLY: self.latency_s(CLOUD_ONLY)}

    def best_single_end(self) -> tuple[Scheme, float]:
        """The faster single-end scheme and its seconds (device-only on ties)."""
        d, c = self.latency_s(DEVICE_ONLY), self.latency_s(CLOUD_ONLY)
        return (DEVICE_ONLY, d) if d <= c else (CLOUD_ONLY, c)

    def split_latencies(self, partition: np.ndarray, channels: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Vectorised latency_s of split schemes given as integer arrays P, C, B; seconds."""
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
        enc_s = (values * self.profile.encode_s_per_value if self.profile.encode_s_per_value > 0
                 else enc[partition, bits])
        dec_s = (values * self.profile.decode_s_per_value if self.profile.decode_s_per_value > 0
                 else dec[partition, bits])
        packed = packed_bytes(channels * hw[partition], bits)
        per_ch, header = self._side()
        scaled = packed * ratio[partition, bits]
        nbytes = np.where(ratio[partition, bits] == 1.0, packed, np.ceil(scaled)) + channels * per_ch + header
        transfer = nbytes * 8.0 / (self.link.bandwidth_mbps * 1e6) + self.link.rtt_s
        # same association as LatencyBreakdown.total_s, so scalar and vector agree bit for bit
        return (head[partition] + enc_s) + transfer + (dec_s + tail[partition])
