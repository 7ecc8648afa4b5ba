"""`coinfer-plan export`: what a device needs to run its side without torch.

The network is cut at every partition point into a chain of ONNX graphs: segment 0 takes
the uint8 image and normalises it (the model's mean/std, in the graph) and runs the
features up to cut 0; segment k runs from cut k-1 to cut k; `classifier` runs from the
last cut to the logits.  Head P is segments 0..P; the whole network (device-only) is every
segment and the classifier.  A chain, not one graph per head: every weight is stored once
(vgg16_bn: one copy of its 528 MB, not one per head), and one pass through the chain times
every cut, as the torch device's profiling does.

The manifest (`export.json`, format coinfer-export/1) records the model, input shape,
normalisation, class count, each partition's shape, graph node and channel-importance
order with how it was ranked (the device keeps the first C of it, as planner.pruning does
from the weights), the weights'
sha256 (the cloud's GetServerInfo reports the same hash for what it serves) and the sha256
of every graph file.  Exporting needs torch, `onnx` and `onnxscript` (`pip install
'.[export]'`); reading needs neither (device.onnx_heads).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from planner.models import SplitCNN, build_model, default_weights_path, file_sha256
from planner.pruning import channel_order, ranking

log = logging.getLogger(__name__)

FORMAT = "coinfer-export/1"
MANIFEST = "export.json"
OPSET = 18


class ExportError(ValueError):
    """An export that cannot be written, or a directory that is not a usable export."""


class _Segment(nn.Module):
    """Segment k of a SplitCNN or GraphCNN (`model.segment(k)`: cut k-1 -> cut k, the last one
    to the logits); the first segment normalises the uint8 image."""

    def __init__(self, model: SplitCNN, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 0:
            x = self.model.preprocess(x)
        return self.model.segment(self.k)(x)


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: dict
    bytes: int


def _write_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> int:
    """One graph, batch 1, static shapes, input `x`, output `y`, written to `path`; its size."""
    import importlib.util
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:      # the exporter needs both; say so here rather than deep inside torch
        raise ExportError(f"exporting needs the onnx and onnxscript packages ({', '.join(missing)} missing): "
                          "pip install 'opt-coinfer[export]'")
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):     # their INFO lines are not ours to show
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):          # the exporter prints its steps on stdout
        torch.onnx.export(module, (example,), str(path), input_names=["x"], output_names=["y"],
                          opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
    return path.stat().st_size


def export_model(model_name: str, out: str | os.PathLike, weights: str | None = None,
                 num_classes: int | None = None) -> ExportResult:
    """Write the export of `model_name` (shipped weights unless `weights`) into `out`."""
    model = build_model(model_name, num_classes=num_classes, weights=weights)
    path = weights or default_weights_path(model.spec)
    sha = file_sha256(path) if path else ""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c, (h, w) = model.spec.in_channels, model.spec.input_hw
    x = torch.randint(0, 256, (1, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    n = len(model.partitions)
    files: dict[str, str] = {}
    segments = []
    total = 0
    with torch.inference_mode():
        for k in range(n + 1):             # segment k ends at cut k; segment n is the classifier
            name = "classifier.onnx" if k == n else f"segment-{k:02d}.onnx"
            seg = _Segment(model, k).eval()
            total += _write_onnx(seg, x, out / name)
            files[name] = file_sha256(out / name)
            if k < n:
                segments.append({"file": name, "to_partition": k})
            x = seg(x)
            model.eval()     # the exporter may have switched modes; the next segment needs eval
    manifest = {
        "format": FORMAT,
        "model": model_name,
        "dataset": model.spec.dataset,
        "num_classes": model.num_classes,
        "input_shape": [c, h, w],
        "mean": list(model.spec.mean),
        "std": list(model.spec.std),
        "weights_sha256": sha,
        "weights": Path(path).name if path else "random initialisation (seed 0)",
        "exporter": f"torch {torch.__version__}, opset {OPSET}",
        "segments": segments,
        "classifier": "classifier.onnx",
        "partitions": [{"index": p.index, "channels": p.channels, "height": p.height, "width": p.width,
                        "after_pooling": p.after_pooling, "channel_order": list(channel_order(model, p.index)),
                        "node": p.node, "ranking": ranking(model, p.index)}
                       for p in model.partitions],
        "files_sha256": files,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out / MANIFEST)     # the manifest last: a directory with one is complete
    return ExportResult(out, manifest, total)
