"""Channel orders measured on training images and recorded beside the weights.

At a graph model's cut that is not a conv+BN output the channels rank by mean absolute
activation (planner.graph_models).  Without a record that statistic is taken over seeded
uniform images; with one, `FILE.channel-order.json` beside the weights `FILE` holds the
orders measured over a few hundred training images.  Every process that loads `FILE` (the
cloud, the torch device, the export for the ONNX device) loads the record too, so both ends
keep the same channels; the record names the weights' sha256 and is refused for any other.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from planner.registry import file_sha256

FORMAT = "coinfer-channel-order/1"
SUFFIX = ".channel-order.json"
RECORD_IMAGES = 300             # training images a record is measured over, by default


class ChannelOrderError(ValueError):
    """A channel-order record that does not belong to the weights or the model it is loaded with."""


def orders_path(weights: str | os.PathLike) -> Path:
    """Where the record of the weights `FILE` lives: `FILE.channel-order.json`."""
    return Path(str(weights) + SUFFIX)


def record_channel_orders(model, weights: str | os.PathLike, images: torch.Tensor, dataset: str) -> Path:
    """Measure the mean absolute activation over `images` ((N, C, H, W) uint8) at every cut
    ranked by it, and write the record beside `weights`; its path."""
    from planner.graph_models import mean_abs_activation
    orders = {}
    for part in model.partitions:
        if model.ranking(part.index) == "mean-abs-activation":
            imp = mean_abs_activation(model, part.index, images)
            orders[str(part.index)] = [int(i) for i in torch.sort(imp, descending=True, stable=True).indices]
    doc = {"format": FORMAT, "model": model.spec.name, "weights_sha256": file_sha256(weights),
           "statistic": "mean-abs-activation", "dataset": dataset, "images": int(len(images)),
           "orders": orders}
    path = orders_path(weights)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)
    return path


def load_channel_orders(path: str | os.PathLike, model_name: str, weights_sha256: str,
                        channels: list[int]) -> dict[int, tuple[int, ...]]:
    """{P: order} from a record, checked against the model, the weights and each cut's width."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ChannelOrderError(f"channel-order record {str(path)!r}: cannot read it: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ChannelOrderError(f"channel-order record {str(path)!r}: expected format {FORMAT}, "
                                f"got {doc.get('format') if isinstance(doc, dict) else type(doc).__name__}")
    if doc.get("model") != model_name:
        raise ChannelOrderError(f"channel-order record {str(path)!r}: expected model {model_name}, got {doc.get('model')}")
    if doc.get("weights_sha256") != weights_sha256:
        raise ChannelOrderError(f"channel-order record {str(path)!r} was measured on weights sha256 "
                                f"{doc.get('weights_sha256')}, but the weights are sha256 {weights_sha256}; "
                                "record it again or remove it")
    out = {}
    for key, order in doc.get("orders", {}).items():
        p = int(key)
        if not 0 <= p < len(channels) or sorted(order) != list(range(channels[p])):
            raise ChannelOrderError(f"channel-order record {str(path)!r}: partition {key}: expected a "
                                    f"permutation of 0..{channels[p] - 1 if 0 <= p < len(channels) else '?'}")
        out[p] = tuple(int(i) for i in order)
    return out
