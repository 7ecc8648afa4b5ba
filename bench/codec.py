"""Feature-map codec benchmark: `python -m bench.codec` (also called by bench.runtime).

1. Encode+decode throughput, MB/s of float32 input on one core, per bit width 1..8 and
   the lossless float32 mode, on a vgg16_bn partition-2-sized (128, 112, 112) map of
   random-normal-after-ReLU values; median over repeats after warm-up.
2. zstd payload bytes over ideal packed bytes ceil(C*H*W*B/8) on real feature maps:
   fmnist-vgg on Fashion-MNIST test images, every partition, all channels kept, B in 1, 2,
   4, 8 (plus the whole message, wire bytes, over the same ideal size).

Prints markdown and writes it to bench/results/codec.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zstandard

from bench.common import RunLoad, header
from common import codec
from common.codec import CodecConfig

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "codec.md"


@dataclass(frozen=True)
class BenchConfig:
    """What the codec benchmark measures."""

    shape: tuple[int, int, int] = (128, 112, 112)  # (C, H, W): vgg16_bn partition 2 at 224x224
    bit_widths: tuple[int | None, ...] = (1, 2, 3, 4, 5, 6, 7, 8, None)  # None = lossless float32
    warmup: int = 3                 # untimed encode+decode rounds per bit width
    repeats: int = 21               # timed rounds per bit width; the median is reported
    model: str = "fmnist-vgg"       # model for the real-feature-map compression table
    images: int = 256               # Fashion-MNIST test images run through its head
    ratio_bits: tuple[int, ...] = (1, 2, 4, 8)
    codec: CodecConfig = CodecConfig()


def _bits_label(bits: int | None) -> str:
    return "float32" if bits is None else str(bits)


def throughput_rows(cfg: BenchConfig) -> list[str]:
    """Encode+decode MB/s of float32 input per bit width on one core."""
    rng = np.random.default_rng(0)
    fm = np.maximum(rng.standard_normal(cfg.shape, dtype=np.float32), 0)   # (C, H, W) float32
    c, h, w = cfg.shape
    rows = [f"### Encode+decode throughput, one core, {c}x{h}x{w} float32 "
            f"(N(0,1) after ReLU, {fm.nbytes / 1e6:.2f} MB), all channels, zstd level {cfg.codec.zstd_level}",
            "",
            "| B | encode ms | decode ms | encode+decode MB/s | best-run MB/s | payload / packed | max abs error |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for bits in cfg.bit_widths:
        for _ in range(cfg.warmup):
            codec.decode_feature_map(codec.encode_feature_map(fm, 2, None, bits, cfg.codec), c, h, w)
        enc_s, dec_s, tot_s = [], [], []
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            enc = codec.encode_feature_map(fm, 2, None, bits, cfg.codec)
            t1 = time.perf_counter()
            out = codec.decode_feature_map(enc, c, h, w)
            t2 = time.perf_counter()
            enc_s.append(t1 - t0)
            dec_s.append(t2 - t1)
            tot_s.append(t2 - t0)
        err = float(np.abs(out - fm).max())
        rows.append(f"| {_bits_label(bits)} | {np.median(enc_s) * 1e3:.2f} | {np.median(dec_s) * 1e3:.2f} | "
                    f"{fm.nbytes / np.median(tot_s) / 1e6:.0f} | {fm.nbytes / min(tot_s) / 1e6:.0f} | "
                    f"{len(enc.payload) / enc.packed_bytes:.3f} | {err:.3g} |")
    return rows


def _real_images(n: int) -> tuple[torch.Tensor, str]:
    from planner.data import load_fashion_mnist
    x, _ = load_fashion_mnist("test", download=False)     # (N, 1, 28, 28) uint8
    return x[:n], f"first {min(n, len(x))} Fashion-MNIST test images"


def ratio_rows(cfg: BenchConfig) -> list[str]:
    """Compressed over ideal packed bytes on real feature maps, per partition and bit width."""
    from planner.models import build_model, default_weights_path, get_spec

    spec = get_spec(cfg.model)
    weights = default_weights_path(spec)
    model = build_model(cfg.model)
    source = f"trained weights {weights.name}" if weights is not None else "random initialisation (no trained weights yet)"
    images, what = _real_images(cfg.images)
    rows = [f"### Compressed / ideal packed bytes on real feature maps: {cfg.model} ({source}), {what}, "
            f"all channels kept, zstd level {cfg.codec.zstd_level}",
            "",
            "payload / packed = zstd payload over ceil(C*H*W*B/8) (mean over images); "
            "wire / packed = the whole FeatureMap message (payload, offsets, scales, header) over the same.",
            "",
            "| P | C x H x W | B | packed bytes | payload bytes (mean) | payload / packed | wire / packed |",
            "|---|---|---|---:|---:|---:|---:|"]
    with torch.inference_mode():
        x = model.preprocess(images)                       # (N, 1, 28, 28) float32
        for part in model.partitions:
            fms = model.head(x, part.index).numpy()        # (N, C, H, W) float32
            c, h, w = fms.shape[1:]
            for bits in cfg.ratio_bits:
                payload, wire, packed = [], [], 0
                for fm in fms:
                    enc = codec.encode_feature_map(fm, part.index, None, bits, cfg.codec)
                    payload.append(len(enc.payload))
                    wire.append(enc.wire_bytes)
                    packed = enc.packed_bytes
                rows.append(f"| {part.index} | {c}x{h}x{w} | {bits} | {packed} | {np.mean(payload):.0f} | "
                            f"{np.mean(payload) / packed:.3f} | {np.mean(wire) / packed:.3f} |")
    return rows


def run(out_lines: list[str] | None = None, cfg: BenchConfig = BenchConfig()) -> list[str]:
    """Run both codec benchmarks on one core; append markdown lines to `out_lines`."""
    lines = out_lines if out_lines is not None else []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lines += [f"numpy {np.__version__}, torch {torch.__version__}, zstandard {zstandard.__version__}; one thread "
                  f"(torch.set_num_threads(1)); medians of {cfg.repeats} timed runs after {cfg.warmup} warm-up.",
                  "", *throughput_rows(cfg), ""]
        try:
            lines += [*ratio_rows(cfg), ""]
        except Exception as e:  # noqa: BLE001 - a missing dataset must not hide the throughput table
            lines += [f"(compression table skipped: {e})", ""]
    finally:
        torch.set_num_threads(threads)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.codec", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=BenchConfig.repeats, help="timed runs per bit width")
    ap.add_argument("--images", type=int, default=BenchConfig.images, help="Fashion-MNIST test images")
    ap.add_argument("--zstd-level", type=int, default=CodecConfig.zstd_level)
    ap.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = BenchConfig(repeats=args.repeats, images=args.images, codec=CodecConfig(zstd_level=args.zstd_level))
    command = "python -m bench.codec" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        sys.argv[1:] if argv is None else argv))
    load = RunLoad()
    body = run([], cfg)
    lines = header("Feature-map codec", command, load) + body
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
