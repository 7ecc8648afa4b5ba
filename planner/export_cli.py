"""`coinfer-plan export`: a thin adapter over planner.export (shared/CONTRACTS.md)."""
from __future__ import annotations

import argparse
import json

from planner.registry import model_names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write what a device needs to run without torch (ONNX graphs, manifest)",
        description="Export the model's heads and whole network as a chain of ONNX graphs (one per stretch "
                    "between consecutive cuts, plus the classifier; graph models are cut where `coinfer-plan "
                    "partitions` says) with a manifest: input shape, "
                    "normalisation, each partition's channel-importance order, the weights' sha256. Run the "
                    "device on it with `coinfer-device ... --runtime onnx --export DIR`.")
    p.add_argument("--model", required=True, choices=model_names())
    p.add_argument("--weights", default=None, help="state dict (default: the model's shipped weights)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier width of --weights")
    p.add_argument("--out", required=True, help="directory to write (created; files in it are replaced)")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from planner.export import ExportError, export_model
    from planner.models import WeightsError
    try:
        r = export_model(args.model, args.out, args.weights, args.num_classes)
    except (ExportError, WeightsError) as e:
        raise SystemExit(f"coinfer-plan export: {e}") from None
    m = r.manifest
    if args.json:
        print(json.dumps({"out": str(r.out), "model": m["model"], "weights_sha256": m["weights_sha256"],
                          "partitions": len(m["partitions"]), "files": len(m["files_sha256"]),
                          "bytes": r.bytes}))
    else:
        print(f"exported {m['model']} ({m['weights']}, sha256 {m['weights_sha256'][:12] or '-'}) to {r.out}: "
              f"{len(m['segments'])} segments + classifier, {r.bytes / 1e6:.2f} MB")
    return 0
