"""Scheme artifacts: a fine-tuned, pruned network for one `P:C:B` scheme, plus its metadata.

File format (torch.save of a plain dict, loadable with `weights_only=True`):

    {"format": "coinfer-artifact/1",
     "model": "fmnist-vgg",              # registry name of the unpruned model
     "scheme": "2:16:4",                 # P:C:B
     "channel_indices": [3, 7, ...],     # the C kept channels of conv P, ascending, original indices
     "recipe": "ft0.25-seed0",           # how it was fine-tuned
     "state_dict": {...}}                # SplitCNN state dict whose conv P has C channels

The device runs `artifact.model.head(x, P)` and encodes all C channels; the cloud runs
`artifact.model.tail(fm, P)`. The file's sha256 names the artifact on both ends.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from planner.models import (ModelSpec, SplitCNN, UnknownModelError, conv_widths, file_sha256, get_spec,
                            partition_table)
from planner.scheme import Scheme, SchemeError

ARTIFACT_FORMAT = "coinfer-artifact/1"
_KEYS = ("format", "model", "scheme", "channel_indices", "recipe", "state_dict")


class ArtifactError(ValueError):
    """A scheme artifact that is missing, malformed or does not fit its model."""


@dataclass(frozen=True)
class Artifact:
    """A loaded scheme artifact."""

    model: SplitCNN                   # eval mode; partition P has C channels
    scheme: Scheme                    # P:C:B
    channel_indices: tuple[int, ...]  # kept channels of conv P in the unpruned model, ascending
    sha256: str                       # of the file, hex
    path: Path
    model_name: str                   # registry name of the unpruned model
    recipe: str                       # fine-tune recipe it was made with


def scheme_spec(spec: ModelSpec, partition: int, channels: int) -> ModelSpec:
    """The registry spec with conv `partition` narrowed to `channels` output channels."""
    widths = conv_widths(spec)
    if not 0 <= partition < len(widths):
        raise SchemeError(f"expected partition P in 0..{len(widths) - 1} for {spec.name}, got {partition}")
    if not 1 <= channels <= widths[partition]:
        raise SchemeError(f"expected channels C in 1..{widths[partition]} for partition {partition} "
                          f"of {spec.name}, got {channels}")
    cfg = list(spec.cfg)
    cfg[partition_table(spec)[partition].cfg_index] = channels
    return dataclasses.replace(spec, cfg=tuple(cfg))


def check_channel_indices(indices: Sequence[int], spec: ModelSpec, scheme: Scheme) -> tuple[int, ...]:
    """Validate kept channel indices against the scheme: C of them, ascending, in range."""
    width = conv_widths(spec)[scheme.partition]
    out = tuple(int(i) for i in indices)
    if len(out) != scheme.channels:
        raise ArtifactError(f"expected {scheme.channels} channel indices for scheme {scheme}, got {len(out)}")
    if any(b <= a for a, b in zip(out, out[1:])) or (out and not 0 <= out[0] <= out[-1] < width):
        raise ArtifactError(f"expected strictly ascending channel indices in 0..{width - 1}, got {list(out)}")
    return out


def save_artifact(path: str | Path, model_name: str, scheme: Scheme, channel_indices: Sequence[int],
                  recipe: str, state_dict: dict[str, torch.Tensor]) -> str:
    """Write an artifact file; returns its sha256 (hex)."""
    spec = get_spec(model_name)
    if not scheme.is_split:
        raise ArtifactError(f"expected a P:C:B scheme, got {scheme}")
    indices = check_channel_indices(channel_indices, spec, scheme)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": ARTIFACT_FORMAT, "model": model_name, "scheme": str(scheme),
                "channel_indices": list(indices), "recipe": recipe,
                "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()}}, tmp)
    tmp.replace(path)  # readers never see half a file
    return file_sha256(path)


def load_artifact(path: str | Path) -> Artifact:
    """Load and check an artifact written by `save_artifact` (weights-only unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file it cannot read
        raise ArtifactError(f"expected a {ARTIFACT_FORMAT} file in {str(path)!r}, "
                            f"got one torch cannot load with weights_only=True: {e}") from e
    if not isinstance(obj, dict) or obj.get("format") != ARTIFACT_FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ArtifactError(f"expected format {ARTIFACT_FORMAT!r} in {str(path)!r}, got {got!r}")
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise ArtifactError(f"artifact {str(path)!r} lacks {', '.join(missing)}")
    try:
        spec = get_spec(obj["model"])
        scheme = Scheme.parse(obj["scheme"])
        if not scheme.is_split:
            raise ArtifactError(f"expected a P:C:B scheme in {str(path)!r}, got {scheme}")
        indices = check_channel_indices(obj["channel_indices"], spec, scheme)
        model = SplitCNN(scheme_spec(spec, scheme.partition, scheme.channels))
        model.load_state_dict(obj["state_dict"], strict=True)
    except (UnknownModelError, SchemeError) as e:
        raise ArtifactError(f"artifact {str(path)!r}: {e}") from e
    except RuntimeError as e:
        raise ArtifactError(f"artifact {str(path)!r}: state dict does not fit {obj['model']} with "
                            f"scheme {obj['scheme']}: {str(e).splitlines()[0]}") from e
    return Artifact(model=model.eval(), scheme=scheme, channel_indices=indices,
                    sha256=file_sha256(path), path=path, model_name=obj["model"],
                    recipe=str(obj["recipe"]))
