"""`python -m bench.graph_profile`: torchvision convnets' cuts, profiled on this machine.

For each model (default resnet18 and mobilenet_v2, 224x224, seeded random weights: timing
only, no accuracy), `coinfer-plan profile`'s measurement (planner.profile.measure_profile):
every cut the torch.fx finder yields, its graph node and feature-map shape, the bytes of the
whole map at 8 bits and of a quarter of its channels at 4 bits, and the head and tail seconds
here (one thread, median of the repeats).  Then the latency model at `--bandwidth-mbps` with
this machine playing both ends prices every cut at those two compressions against both single
ends, as a table and a PNG (latency per cut; zstd ratio 1, so the bytes are an upper bound).
Random weights have no accuracy, so no latency/accuracy frontier is drawn for them: that
needs a trained model and its database (fmnist-resnet: `coinfer-plan frontier`).
"""
from __future__ import annotations

import argparse
import json
import sys

from bench import common
from common.codec import packed_bytes

MODELS = ("resnet18", "mobilenet_v2")
OUT_DIR = common.RESULTS / "graph_profile"


def cut_rows(profile, model, bandwidth_mbps: float) -> list[dict]:
    """Per cut: node, shape, bytes and predicted latency at C=all/8 bits and C/4 at 4 bits."""
    from planner.latency import BytesModel, LatencyModel
    from planner.scheme import Scheme
    lat = LatencyModel.from_profile(profile, bandwidth_mbps, bytes_model=BytesModel(use_codec_ratio=False))
    rows = []
    for part, spec in zip(profile.partitions, model.partitions):
        c, h, w = part.conv_channels, part.height, part.width
        full, quarter = Scheme.split(part.index, c, 8), Scheme.split(part.index, max(1, c // 4), 4)
        rows.append({"P": part.index, "node": spec.node, "shape": [c, h, w],
                     "head_s": part.device_head_s, "tail_s": part.cloud_tail_s,
                     "bytes_8bit": packed_bytes(c * h * w, 8), "bytes_quarter_4bit": packed_bytes(max(1, c // 4) * h * w, 4),
                     "latency_8bit_s": lat.latency_s(full), "latency_quarter_4bit_s": lat.latency_s(quarter)})
    return rows


def plot(rows: list[dict], single: dict[str, float], title: str, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ps = [r["P"] for r in rows]
    ax.plot(ps, [r["latency_8bit_s"] for r in rows], "o-", label="all channels, 8 bits")
    ax.plot(ps, [r["latency_quarter_4bit_s"] for r in rows], "s-", label="C/4 channels, 4 bits")
    for (name, s), style in zip(single.items(), ("--", ":")):
        ax.axhline(s, linestyle=style, color="grey", label=name)
    ax.set_xlabel("cut P (torch.fx finder, execution order)")
    ax.set_ylabel("predicted latency (s)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.graph_profile", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="registry names (torchvision graph models)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per head/tail (median kept)")
    ap.add_argument("--bandwidth-mbps", type=float, default=1.0, help="uplink for the predicted latencies")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = ap.parse_args(argv)
    import torch

    from planner.latency import LatencyModel
    from planner.models import build_model
    from planner.profile import MeasureConfig, measure_profile, save_profile
    from planner.scheme import CLOUD_ONLY, DEVICE_ONLY
    load = common.RunLoad()
    torch.set_num_threads(1)
    lines = common.header("torchvision convnets: cuts from the graph, profiled (bench.graph_profile)",
                          common.command_line("bench.graph_profile", argv), load)
    lines += [f"- seeded random weights, 224x224, one thread; median of {args.repeats} passes per head and "
              f"tail, batch 1; this machine plays both ends; predicted latencies at {args.bandwidth_mbps:g} Mbps, "
              "zstd ratio 1 (bytes as packed: an upper bound)", ""]
    results = {}
    if not args.no_write:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        print(f"profiling {name}", file=sys.stderr, flush=True)
        profile = measure_profile(name, MeasureConfig(warmup=1, repeats=args.repeats, batch=1, threads=1))
        model = build_model(name)
        rows = cut_rows(profile, model, args.bandwidth_mbps)
        lat = LatencyModel.from_profile(profile, args.bandwidth_mbps)
        single = {"device-only": lat.latency_s(DEVICE_ONLY), "cloud-only": lat.latency_s(CLOUD_ONLY)}
        results[name] = {"rows": rows, "single_ends_s": single, "full_model_s": profile.device_full_model_s}
        lines += [f"### {name}: {len(rows)} cuts, whole network {profile.device_full_model_s * 1e3:.1f} ms here", "",
                  "| P | graph node | C x H x W | head ms | tail ms | bytes, all at 8 bits | bytes, C/4 at 4 bits | "
                  "latency s, all at 8 bits | latency s, C/4 at 4 bits |",
                  "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            c, h, w = r["shape"]
            lines.append(f"| {r['P']} | `{r['node']}` | {c} x {h} x {w} | {r['head_s'] * 1e3:.2f} | "
                         f"{r['tail_s'] * 1e3:.2f} | {r['bytes_8bit']} | {r['bytes_quarter_4bit']} | "
                         f"{r['latency_8bit_s']:.4f} | {r['latency_quarter_4bit_s']:.4f} |")
        lines += ["", f"Single ends at {args.bandwidth_mbps:g} Mbps: device-only {single['device-only']:.4f} s, "
                  f"cloud-only {single['cloud-only']:.4f} s (the raw 224x224x3 image).", ""]
        if not args.no_write:
            save_profile(profile, OUT_DIR / f"{name}.profile.json")
            png = OUT_DIR / f"{name}-{args.bandwidth_mbps:g}mbps.png"
            plot(rows, single, f"{name} (random weights), predicted latency per cut at {args.bandwidth_mbps:g} Mbps",
                 png)
            lines += [f"![{name} latency per cut](graph_profile/{png.name})", ""]
    lines += [common.notes_line("graph_profile")]
    if args.no_write:
        print("\n".join(lines))
    else:
        (OUT_DIR / "graph_profile.json").write_text(json.dumps(results, indent=1))
        common.write("graph_profile", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
