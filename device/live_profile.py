"""The live profile: what the device measured (its compute, the link, the zstd ratio and
codec seconds of the frames it sent) and what the cloud reported (tail seconds), as a
planner Profile in the project's format, which `coinfer-plan` reads too."""
from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field
from typing import Callable

from common import codec
from device.device_times import DeviceTimes
from device.link import LinkEstimator
from device.heads import Heads
from planner.profile import CodecProfile, DeviceCpu, PartitionProfile, Profile, save_profile
from planner.scheme import Mode, Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb

SIDE_BYTES_PER_CHANNEL = 8   # float32 offset + float32 scale per kept channel
HEADER_BYTES = 48            # request id, model name, shape fields: measured order of magnitude


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
    encode_s_fixed: float = 0.0         # the encoder's seconds per frame (DeviceTimes), not per value

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
            if encode_s is not None:      # the per-frame part is the start-up measure's (encode_s_fixed)
                self.encode_s_per_value = _ewma(self.encode_s_per_value,
                                                max(0.0, encode_s - self.encode_s_fixed) / values, self.alpha)
            if decode_s is not None:
                self.decode_s_per_value = _ewma(self.decode_s_per_value, decode_s / values, self.alpha)
        elif kind == "image":
            raw = req.image.channels * req.image.height * req.image.width
            self.image_ratio = _ewma(self.image_ratio, len(req.image.payload) / raw, self.alpha)


@dataclass
class LiveState:
    model_name: str
    heads: Heads                         # the device's network, at the input size the cloud serves
    device: DeviceTimes
    server: pb.ModelInfo | None          # the cloud's model info; None until it has answered
    base_top1_error: float | None
    link: LinkEstimator = field(default_factory=LinkEstimator)
    bytes: ByteRatios = field(default_factory=ByteRatios)
    cpu_limit: tuple[float, float] | None = None      # (share, CFS period s) of this process's cgroup
    call_cpu_s: Callable[[], float | None] = lambda: None   # device CPU s of one cloud call, as measured
    loop_cpu_s: float | None = None      # EWMA: process CPU s between one frame's end and the next's start
    # EWMA: the device's network CPU in the frame loop over the start-up profile's price of it
    # (device-only and split frames).  Under a quota the caches go cold while the process is
    # throttled, and the loop's other threads run inside the frame; fmnist-vgg at a 0.1 quota
    # (2026-12-06): device-only frames took 2.7 ms of CPU where warm passes priced 1.7 ms
    head_cpu_scale: float | None = None

    def __post_init__(self) -> None:
        self.bytes.encode_s_fixed = self.device.encode_s_fixed

    def observe_loop_cpu(self, cpu_s: float, alpha: float = 0.2) -> None:
        self.loop_cpu_s = _ewma(self.loop_cpu_s, cpu_s, alpha)

    def observe_image(self, image, codec_cfg: codec.CodecConfig) -> None:
        """The zstd ratio of cloud-only's upload from one real image, until a cloud-only frame
        measures it (unknown, a ~500-byte Fashion-MNIST upload was priced at 832 bytes)."""
        if self.bytes.image_ratio is None:
            msg = codec.encode_image(image, codec_cfg)
            self.bytes.image_ratio = len(msg.payload) / max(1, image.size)

    def observe_frame_cpu(self, scheme: Scheme, cpu_s: float, alpha: float = 0.2) -> None:
        """One frame's process CPU seconds (every thread), run with `scheme`: against the
        profile's price of its network part (the call's and the encoder's measured CPU taken
        out), it updates `head_cpu_scale`.  Ratios are clamped to [0.5, 4]: one frame that met
        a stray stall must not reprice every head."""
        d = self.device
        if scheme.mode is Mode.DEVICE_ONLY:
            priced, other = d.device_only_cpu_s or d.full_model_cpu_s, 0.0
        elif scheme.is_split and d.head_cpu_s:
            part = self.heads.partitions[scheme.partition]
            per_value = self.bytes.encode_s_per_value or d.encode_s_per_value
            enc = d.encode_s_fixed + per_value * scheme.channels * part.height * part.width
            priced, other = d.head_cpu_s[scheme.partition], enc + (self.call_cpu_s() or 0.0)
        else:
            return
        if priced > 0:
            ratio = min(4.0, max(0.5, (cpu_s - other) / priced))
            self.head_cpu_scale = _ewma(self.head_cpu_scale, ratio, alpha)

    def device_cpu(self) -> DeviceCpu | None:
        """CPU seconds and the quota, when the device runs under a CPU limit (else wall seconds
        price it, as measured)."""
        d = self.device
        if self.cpu_limit is None or self.cpu_limit[0] >= 1 or not d.head_cpu_s:
            return None
        k = self.head_cpu_scale or 1.0
        return DeviceCpu(self.cpu_limit[0], self.cpu_limit[1], tuple(k * c for c in d.head_cpu_s),
                         k * (d.device_only_cpu_s or d.full_model_cpu_s), self.call_cpu_s() or 0.0,
                         self.loop_cpu_s or 0.0)

    def profile(self) -> Profile:
        heads, (h, w) = self.heads, self.heads.input_hw
        parts = tuple(
            PartitionProfile(index=p.index, conv_channels=p.channels, after_pooling=p.after_pooling,
                             height=p.height, width=p.width, device_head_s=self.device.head_s[p.index],
                             cloud_tail_s=self.server.partitions[p.index].cloud_tail_s)
            for p in heads.partitions)
        raw = heads.spec.in_channels * h * w
        upload = math.ceil(raw * (self.bytes.image_ratio or 1.0)) + HEADER_BYTES
        b = self.bytes
        codec = tuple(CodecProfile(p, bits, r, b.encode_s.get((p, bits), 0.0), b.decode_s.get((p, bits), 0.0))
                      for (p, bits), r in sorted(b.ratios.items()))
        return Profile(
            model=self.model_name, dataset=heads.spec.dataset, num_classes=heads.num_classes,
            base_top1_error=self.base_top1_error, input_shape=(heads.spec.in_channels, h, w),
            cloud_only_upload_bytes=upload, device_full_model_s=self.device.device_only_s or self.device.full_model_s,
            cloud_full_model_s=self.server.cloud_full_model_s, partitions=parts,
            device_hardware=f"{platform.node()} ({platform.machine()})"
                            + (f", CPU quota {self.device.cpu_quota:g}" if self.device.cpu_quota else ""),
            cloud_hardware="coinfer-cloud (server-info)", rtt_s=self.link.rtt_s, codec=codec,
            side_bytes_per_channel=SIDE_BYTES_PER_CHANNEL, header_bytes=HEADER_BYTES,
            encode_s_per_value=b.encode_s_per_value or self.device.encode_s_per_value,
            encode_s_fixed=self.device.encode_s_fixed,
            decode_s_per_value=b.decode_s_per_value or 0.0, device_cpu=self.device_cpu(),
            measured={"bandwidth_mbps": self.link.bandwidth_mbps, "link_samples": self.link.samples,
                      "device_repeats": self.device.repeats, "source": "coinfer-device live"})

    def write_profile(self, path: str | os.PathLike) -> None:
        save_profile(self.profile(), path)
