"""The network: one builder (`SplitCNN`) for every registry entry, able to run any head or
tail of itself, and weights loading.  The registry and partition tables are torch-free in
`planner.registry` and re-exported here."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models.vgg import make_layers

from planner.cut_model import CutModel
from planner.registry import (IMAGENET_MEAN, IMAGENET_STD, VGG_CFGS, WEIGHTS_DIR, BuilderKind, ModelSpec,
                              PartitionSpec, UnknownModelError, WeightsError, WeightsMismatch, conv_widths,
                              default_weights_path, file_sha256, get_spec, model_names, partition_shapes,
                              partition_table, register)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VGG_CFGS", "WEIGHTS_DIR", "BuilderKind", "ModelSpec", "PartitionSpec",   # re-exported
           "UnknownModelError", "WeightsError", "WeightsMismatch", "conv_widths", "default_weights_path",
           "file_sha256", "get_spec", "model_names", "partition_shapes", "partition_table", "register",
           "BUILDERS", "SplitCNN", "build_model", "load_state_dict_file"]

log = logging.getLogger(__name__)


class SplitCNN(CutModel):
    """A VGG-style CNN that can run any head or tail of itself.

    Attribute names (`features`, `avgpool`, `classifier`) match torchvision's VGG so its
    state dicts load unchanged.
    """

    def __init__(self, spec: ModelSpec, num_classes: int | None = None):
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes or spec.num_classes
        self.partitions = partition_table(spec)
        features = make_layers(list(spec.cfg), batch_norm=True)
        if spec.in_channels != 3:  # make_layers assumes RGB; swap the first conv
            first: nn.Conv2d = features[0]
            features[0] = nn.Conv2d(spec.in_channels, first.out_channels, 3, padding=1)
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(spec.pool_hw)
        layers: list[nn.Module] = []
        width = self.partitions[-1].channels * spec.pool_hw[0] * spec.pool_hw[1]
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(True), nn.Dropout(spec.dropout)]
            width = h
        layers.append(nn.Linear(width, self.num_classes))
        self.classifier = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self, seed: int = 0) -> None:
        """torchvision VGG's initialisation, seeded: two processes build the same network."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._init_modules()

    def _init_modules(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def head(self, x: torch.Tensor, p: int) -> torch.Tensor:
        """(N, C, H, W) normalised input -> (N, C_p, H_p, W_p) feature map at P."""
        return self.features[: self.partition(p).feature_end](x)

    def tail(self, fm: torch.Tensor, p: int) -> torch.Tensor:
        """(N, C_p, H_p, W_p) feature map at P -> (N, num_classes) logits."""
        x = self.features[self.partition(p).feature_end:](fm)
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def segment(self, k: int) -> nn.Module:
        """Segment k: input -> cut 0 (k = 0), cut k-1 -> cut k, last cut -> logits (k = len(partitions));
        head(P) is segments 0..P (planner.export, the device's timed pass)."""
        ends = [p.feature_end for p in self.partitions]
        start = ends[k - 1] if k > 0 else 0
        if k < len(ends):
            return self.features[start:ends[k]]
        return nn.Sequential(self.features[start:], self.avgpool, nn.Flatten(1), self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict with weights-only unpickling; strips DataParallel's `module.`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds here
        raise WeightsError(f"cannot load weights {str(path)!r} with weights_only=True: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"expected a state dict of tensors in {str(path)!r}, got {type(obj).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _graph_cnn(spec: ModelSpec, num_classes: int | None) -> nn.Module:
    from planner.graph_models import GraphCNN
    return GraphCNN(spec, num_classes)


# builder kind -> the one builder of that kind (planner.registry.BuilderKind)
BUILDERS = {BuilderKind.VGG_CFG: SplitCNN, BuilderKind.TORCHVISION_GRAPH: _graph_cnn}


def build_model(name: str, num_classes: int | None = None, weights: str | Path | None = None,
                use_default_weights: bool = True) -> SplitCNN:
    """Build a registered model in eval mode; load `weights`, else the shipped default (else a
    seeded random initialisation: timing only)."""
    spec = get_spec(name)
    if num_classes is not None and num_classes < 1:
        raise WeightsError(f"expected --num-classes >= 1, got {num_classes}")
    model = BUILDERS[spec.builder](spec, num_classes)
    path = weights if weights is not None else (default_weights_path(spec) if use_default_weights else None)
    if path is not None:
        sd = load_state_dict_file(path)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise WeightsError(
                f"weights {str(path)!r} do not fit {name} with {model.num_classes} classes "
                f"(use --num-classes for another head): {str(e).splitlines()[0]}") from e
        if spec.builder is BuilderKind.TORCHVISION_GRAPH and model.use_recorded_orders(str(path)):
            log.info("%s: channel orders from %s", name, model.orders_source)
    elif spec.default_weights is not None and use_default_weights:
        log.warning("no trained weights for %s at %s; using random initialisation",
                    name, WEIGHTS_DIR / spec.default_weights)
    elif spec.builder is BuilderKind.TORCHVISION_GRAPH and use_default_weights:
        log.warning("%s: no --weights; seeded random initialisation (random init: timing only)", name)
    return model.eval()

