"""Latency profiles: what a model costs on the device and in the cloud, per partition point.

One loader, `load_profile`, reads both
- the seed's format (shared/seed/vgg16_bn_stanford_cars.profile.json): model, dataset,
  base_top1_error, input.cloud_only_upload_bytes, device/cloud full_model_s and, per
  partition, conv_channels, after_pooling, height, width, device_head_s, cloud_tail_s;
- the project's format (`"format": "opt-coinfer-profile/1"`, written by `save_profile`):
  the same fields plus optional `rtt_s`, a `codec` table (zstd ratio and encode/decode
  seconds per (partition, bits)), `codec_s_per_value` (device encode and cloud decode
  seconds per feature-map value sent, C*H*W: prices any P:C:B, also one never sent),
  side-data bytes and a `measured` block saying where and how it was measured.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.timing import median_seconds

PROJECT_FORMAT = "opt-coinfer-profile/1"


class ProfileError(ValueError):
    """A profile file that does not hold what the latency model needs."""


@dataclass(frozen=True)
class PartitionProfile:
    """Partition point P: the cut after conv P (after its max-pooling, if any)."""

    index: int              # P, 0-based conv index
    conv_channels: int      # output channels of conv P (the most C can be)
    after_pooling: bool     # the cut is after the max-pooling that follows conv P
    height: int             # feature-map height at the cut, values
    width: int              # feature-map width at the cut, values
    device_head_s: float    # device seconds for the network up to and including the cut
    cloud_tail_s: float     # cloud seconds for the rest


@dataclass(frozen=True)
class DeviceCpu:
    """The device's CPU seconds (not wall seconds) and the CFS quota it runs under.

    Under a quota a frame's device work runs at full speed while the period's budget lasts,
    so its wall time depends on what the device did before (planner.latency prices it);
    the same holds for a container with a CPU limit."""

    share: float                      # fraction of one CPU the device may use (1: unlimited)
    period_s: float                   # CFS period, s (0.1 by default)
    head_cpu_s: tuple[float, ...]     # CPU s from the uint8 image to each cut
    full_model_cpu_s: float           # CPU s of the whole network
    call_cpu_s: float = 0.0           # CPU s of one cloud call on the device (gRPC, serialization)
    loop_cpu_s: float = 0.0           # CPU s per frame outside it (next image, results): rationed too


@dataclass(frozen=True)
class CodecProfile:
    """Measured entropy coding of the packed feature map at one (partition, bits)."""

    partition: int          # P
    bits: int               # B
    zstd_ratio: float       # compressed bytes / packed bytes, 0 < r (usually <= 1)
    encode_s: float = 0.0   # device seconds to quantize, pack and compress
    decode_s: float = 0.0   # cloud seconds to decompress and dequantize


@dataclass(frozen=True)
class Profile:
    """Everything the latency model needs about one model on one device-cloud pair."""

    model: str
    dataset: str | None
    num_classes: int
    base_top1_error: float | None            # unmodified model's top-1 error, fraction
    input_shape: tuple[int, int, int]        # (C, H, W) of the network input
    cloud_only_upload_bytes: int             # bytes the cloud-only baseline uploads per image
    device_full_model_s: float               # whole network on the device, s
    cloud_full_model_s: float                # whole network in the cloud, s
    partitions: tuple[PartitionProfile, ...]
    device_hardware: str = ""
    cloud_hardware: str = ""
    bandwidths_mbps: tuple[float, ...] = ()  # bandwidths the scenario is studied at
    rtt_s: float | None = None               # measured round-trip time, s
    codec: tuple[CodecProfile, ...] = ()     # measured zstd per (P, B); empty: none
    side_bytes_per_channel: int = 0          # per-channel quantization side data, bytes
    header_bytes: int = 0                    # fixed per-message overhead, bytes
    encode_s_per_value: float = 0.0          # device encode s per value sent (C*H*W); 0: use codec
    encode_s_fixed: float = 0.0              # ... plus these device encode s per frame
    decode_s_per_value: float = 0.0          # cloud decode s per value sent; 0: use codec
    device_cpu: DeviceCpu | None = None      # CPU seconds and quota: None prices wall seconds only
    measured: dict[str, Any] = field(default_factory=dict, compare=False)  # host, repeats...

    def __post_init__(self) -> None:
        if not self.partitions:
            raise ProfileError("expected at least one partition, got none")
        for i, p in enumerate(self.partitions):
            if p.index != i:
                raise ProfileError(f"expected partitions in order 0..n-1, got index {p.index} at {i}")

    def partition(self, p: int) -> PartitionProfile:
        if not 0 <= p < len(self.partitions):
            raise ProfileError(f"expected partition P in 0..{len(self.partitions) - 1}, got {p}")
        return self.partitions[p]

    def codec_entry(self, p: int, bits: int) -> CodecProfile | None:
        for c in self.codec:
            if c.partition == p and c.bits == bits:
                return c
        return None


def _req(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ProfileError(f"{where}: expected key {key!r}, got keys {sorted(d)}")
    return d[key]


def profile_from_dict(d: dict, where: str = "<profile>") -> Profile:
    """Build a Profile from the seed's or the project's JSON object."""
    fmt = d.get("format")
    if fmt is not None and fmt != PROJECT_FORMAT:
        raise ProfileError(f"{where}: expected format {PROJECT_FORMAT!r} or none (seed), got {fmt!r}")
    inp = _req(d, "input", where)
    dev = _req(d, "device", where)
    cloud = _req(d, "cloud", where)
    parts = tuple(
        PartitionProfile(index=int(_req(p, "index", where)), conv_channels=int(_req(p, "conv_channels", where)),
                         after_pooling=bool(_req(p, "after_pooling", where)),
                         height=int(_req(p, "height", where)), width=int(_req(p, "width", where)),
                         device_head_s=float(_req(p, "device_head_s", where)),
                         cloud_tail_s=float(_req(p, "cloud_tail_s", where)))
        for p in _req(d, "partitions", where))
    codec = tuple(
        CodecProfile(partition=int(c["partition"]), bits=int(c["bits"]), zstd_ratio=float(c["zstd_ratio"]),
                     encode_s=float(c.get("encode_s", 0.0)), decode_s=float(c.get("decode_s", 0.0)))
        for c in d.get("codec", ()))
    for c in codec:
        if not (c.zstd_ratio > 0 and math.isfinite(c.zstd_ratio)):
            raise ProfileError(f"{where}: expected zstd_ratio > 0, got {c.zstd_ratio} at {c.partition}:{c.bits}")
    per_value = d.get("codec_s_per_value") or {}
    if not isinstance(per_value, dict):
        raise ProfileError(f"{where}: expected codec_s_per_value as an object, got {per_value!r}")
    enc_pv, dec_pv, enc_fixed = (float(per_value.get(k) or 0.0) for k in ("encode_s", "decode_s", "encode_fixed_s"))
    if not (0 <= enc_pv < math.inf and 0 <= dec_pv < math.inf and 0 <= enc_fixed < math.inf):
        raise ProfileError(f"{where}: expected codec_s_per_value seconds >= 0, got {per_value!r}")
    base = d.get("base_top1_error")
    rtt = d.get("rtt_s")
    cpu = dev.get("cpu")
    device_cpu = None
    if cpu is not None:
        try:
            device_cpu = DeviceCpu(float(cpu["share"]), float(cpu["period_s"]),
                                   tuple(float(v) for v in cpu["head_cpu_s"]), float(cpu["full_model_cpu_s"]),
                                   float(cpu.get("call_cpu_s", 0.0)), float(cpu.get("loop_cpu_s", 0.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ProfileError(f"{where}: device.cpu: expected share, period_s, head_cpu_s, full_model_cpu_s "
                               f"(call_cpu_s), got {cpu!r}") from e
        if not (0 < device_cpu.share <= 1 and device_cpu.period_s > 0) or len(device_cpu.head_cpu_s) != len(parts):
            raise ProfileError(f"{where}: device.cpu: expected 0 < share <= 1, period_s > 0 and one head_cpu_s "
                               f"per partition ({len(parts)}), got {cpu!r}")
    return Profile(
        model=str(_req(d, "model", where)), dataset=d.get("dataset"),
        num_classes=int(d.get("num_classes", 0)),
        base_top1_error=None if base is None else float(base),
        input_shape=tuple(int(x) for x in _req(inp, "shape", where)),
        cloud_only_upload_bytes=int(_req(inp, "cloud_only_upload_bytes", where)),
        device_full_model_s=float(_req(dev, "full_model_s", where)),
        cloud_full_model_s=float(_req(cloud, "full_model_s", where)),
        partitions=parts, device_hardware=str(dev.get("hardware", "")),
        cloud_hardware=str(cloud.get("hardware", "")),
        bandwidths_mbps=tuple(float(b) for b in d.get("bandwidths_mbps", ())),
        rtt_s=None if rtt is None else float(rtt), codec=codec,
        side_bytes_per_channel=int(d.get("side_bytes_per_channel", 0)),
        header_bytes=int(d.get("header_bytes", 0)), encode_s_per_value=enc_pv, decode_s_per_value=dec_pv,
        encode_s_fixed=enc_fixed, device_cpu=device_cpu, measured=dict(d.get("measured", {})))


def load_profile(path: str | os.PathLike) -> Profile:
    """Read a profile JSON file in the seed's or the project's format."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"profile {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ProfileError(f"expected JSON in profile {str(path)!r}, got: {e}") from e
    if not isinstance(d, dict):
        raise ProfileError(f"expected a JSON object in {str(path)!r}, got {type(d).__name__}")
    return profile_from_dict(d, str(path))


def profile_to_dict(p: Profile) -> dict:
    """The project's JSON object for a profile (a superset of the seed's fields)."""
    return {
        "format": PROJECT_FORMAT,
        "model": p.model, "dataset": p.dataset, "num_classes": p.num_classes,
        "base_top1_error": p.base_top1_error,
        "input": {"shape": list(p.input_shape), "cloud_only_upload_bytes": p.cloud_only_upload_bytes},
        "device": {"hardware": p.device_hardware, "full_model_s": p.device_full_model_s,
                   **({"cpu": {"share": p.device_cpu.share, "period_s": p.device_cpu.period_s,
                               "head_cpu_s": list(p.device_cpu.head_cpu_s),
                               "full_model_cpu_s": p.device_cpu.full_model_cpu_s,
                               "call_cpu_s": p.device_cpu.call_cpu_s,
                               "loop_cpu_s": p.device_cpu.loop_cpu_s}} if p.device_cpu else {})},
        "cloud": {"hardware": p.cloud_hardware, "full_model_s": p.cloud_full_model_s},
        "bandwidths_mbps": list(p.bandwidths_mbps),
        "rtt_s": p.rtt_s,
        "side_bytes_per_channel": p.side_bytes_per_channel,
        "header_bytes": p.header_bytes,
        "partitions": [
            {"index": q.index, "conv_channels": q.conv_channels, "after_pooling": q.after_pooling,
             "height": q.height, "width": q.width, "device_head_s": q.device_head_s,
             "cloud_tail_s": q.cloud_tail_s} for q in p.partitions],
        "codec": [{"partition": c.partition, "bits": c.bits, "zstd_ratio": c.zstd_ratio,
                   "encode_s": c.encode_s, "decode_s": c.decode_s} for c in p.codec],
        "codec_s_per_value": {"encode_s": p.encode_s_per_value, "decode_s": p.decode_s_per_value,
                              "encode_fixed_s": p.encode_s_fixed},
        "measured": p.measured,
    }


def save_profile(p: Profile, path: str | os.PathLike) -> None:
    """Write a profile in the project's format (readable by `load_profile`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile_to_dict(p), indent=1) + "\n")


# -- measuring on this machine ---------------------------------------------------------------
@dataclass(frozen=True)
class MeasureConfig:
    warmup: int = 2          # untimed runs before each measurement
    repeats: int = 7         # timed runs; the median is kept
    batch: int = 1           # images per forward pass
    threads: int | None = None   # torch intra-op threads (None: torch's default)


def _median_s(fn, cfg: MeasureConfig) -> float:
    return median_seconds(fn, cfg.repeats, cfg.warmup)


def measure_profile(model_name: str, cfg: MeasureConfig = MeasureConfig(), weights: str | None = None,
                    num_classes: int | None = None, base_top1_error: float | None = None,
                    progress: bool = False) -> Profile:
    """Time head and tail per partition, and the full model, on this machine (CPU).

    This machine plays both ends: `device_head_s` and `cloud_tail_s` are both measured
    here; the live profiler replaces the cloud figures with the server's own.
    `cloud_only_upload_bytes` is the raw uint8 input (C*H*W), as in the seed.
    """
    import platform

    import torch

    from planner.models import build_model, partition_shapes

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = build_model(model_name, num_classes=num_classes, weights=weights)
    spec = model.spec
    h, w = spec.input_hw
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (cfg.batch, spec.in_channels, h, w), dtype=torch.uint8, generator=gen)
    shapes = partition_shapes(spec)
    parts = []
    iterator = range(len(model.partitions))
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=f"profile {model_name}", unit="partition")
    with torch.inference_mode():
        x = model.preprocess(images)                                  # (N, C, H, W) float32
        full_s = _median_s(lambda: model(model.preprocess(images)), cfg)
        for p in iterator:
            fm = model.head(x, p)                                     # (N, C_p, H_p, W_p)
            head_s = _median_s(lambda: model.head(model.preprocess(images), p), cfg)
            tail_s = _median_s(lambda: model.tail(fm, p), cfg)
            c, fh, fw = shapes[p]
            assert tuple(fm.shape[1:]) == (c, fh, fw), (fm.shape, shapes[p])
            part = model.partitions[p]
            parts.append(PartitionProfile(index=p, conv_channels=c, after_pooling=part.after_pooling,
                                          height=fh, width=fw, device_head_s=head_s / cfg.batch,
                                          cloud_tail_s=tail_s / cfg.batch))
    host = f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'})"
    return Profile(
        model=model_name, dataset=spec.dataset, num_classes=model.num_classes,
        base_top1_error=base_top1_error, input_shape=(spec.in_channels, h, w),
        cloud_only_upload_bytes=spec.in_channels * h * w,
        device_full_model_s=full_s / cfg.batch, cloud_full_model_s=full_s / cfg.batch,
        partitions=tuple(parts), device_hardware=host, cloud_hardware=host,
        measured={"host": host, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "warmup": cfg.warmup, "repeats": cfg.repeats, "batch": cfg.batch,
                  "statistic": "median", "clock": "time.perf_counter"})
