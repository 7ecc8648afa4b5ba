"""`python -m bench.ranking`: the two channel rankings compared on fmnist-vgg.

Every VGG cut is a conv+BN output, ranked by the BN-folded L1 norm (planner.pruning). A graph
model's cut that is not (a residual sum) is ranked by the mean absolute activation instead
(planner.graph_models).  Here both rankings pick the kept channels of the same schemes on the
shipped fmnist-vgg weights, unmodified (no fine-tuning), the activation statistic taken over
the first `--stats-images` training images; each scheme's top-1 error is measured on the first
`--test-images` test images through the runtime's own codec (per-channel min/max, B bits),
and the overlap of the two kept sets is reported.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from bench.common import RunLoad, command_line, header, write
from common import codec
from planner.data import load_fashion_mnist
from planner.graph_models import mean_abs_activation
from planner.models import build_model
from planner.pruning import channel_order
from planner.scheme import Scheme, kept_channels

MODEL = "fmnist-vgg"
SCHEMES = ("0:4:4", "0:8:2", "1:8:4", "1:16:2", "2:8:4", "3:8:4", "3:16:2", "4:16:4", "5:8:4", "5:32:2")


@torch.inference_mode()
def scheme_error(model, scheme: Scheme, keep: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 error of head -> keep + B-bit codec -> tail over (x, y)."""
    p = scheme.partition
    wrong = 0
    for i in range(0, len(x), 256):
        fm = model.head(model.preprocess(x[i:i + 256]), p).numpy()          # (n, C_p, H_p, W_p)
        c, h, w = fm.shape[1:]
        dec = np.stack([codec.decode_feature_map(codec.encode_feature_map(f, p, keep, scheme.bits),
                                                 total_channels=c, height=h, width=w) for f in fm])
        logits = model.tail(torch.from_numpy(dec), p)
        wrong += int((logits.argmax(1) != y[i:i + 256]).sum())
    return wrong / len(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ranking", description=__doc__.splitlines()[0])
    ap.add_argument("--stats-images", type=int, default=500, help="training images for the activation statistic")
    ap.add_argument("--test-images", type=int, default=2000, help="test images per scheme")
    args = ap.parse_args(argv)
    load = RunLoad()
    torch.set_num_threads(1)
    model = build_model(MODEL)
    xtr, _ = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    stats, x, y = xtr[:args.stats_images], xte[:args.test_images], yte[:args.test_images]
    with torch.inference_mode():
        base = float((model(model.preprocess(x)).argmax(1) != y).float().mean())
    lines = header(f"Channel ranking at a cut: BN-folded vs mean absolute activation ({MODEL})",
                   command_line("bench.ranking", argv), load)
    lines += [f"Shipped weights, no fine-tuning; activation statistic over {len(stats)} training images; "
              f"top-1 error on {len(y)} test images (unmodified model: {base:.4f}).", "",
              "| scheme | kept in common | error, BN-folded | error, mean-abs-activation | difference |",
              "|---|---:|---:|---:|---:|"]
    diffs = []
    for text in SCHEMES:
        s = Scheme.parse(text)
        bn = kept_channels(channel_order(model, s.partition), s.channels, s.partition, MODEL)
        act_imp = mean_abs_activation(model, s.partition, stats)
        act_order = tuple(int(i) for i in torch.sort(act_imp, descending=True, stable=True).indices)
        act = kept_channels(act_order, s.channels, s.partition, MODEL)
        e_bn = scheme_error(model, s, np.asarray(bn, dtype=np.uint32), x, y)
        e_act = scheme_error(model, s, np.asarray(act, dtype=np.uint32), x, y)
        diffs.append(e_act - e_bn)
        lines.append(f"| {text} | {len(set(bn) & set(act))}/{s.channels} | {e_bn:.4f} | {e_act:.4f} | "
                     f"{e_act - e_bn:+.4f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    lines += ["", f"Mean difference (activation - BN-folded): {np.mean(diffs):+.4f}; "
              f"activation better in {sum(d < 0 for d in diffs)} of {len(diffs)} schemes.", load.line()]
    write("ranking", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
