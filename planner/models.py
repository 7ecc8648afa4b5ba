"""Model registry and partition tables.

A model family is a data table (a torchvision-style `cfg` of conv widths and "M" for
2x2 max-pooling, plus input and classifier settings) consumed by one builder. The
partition point P is the cut after conv P, its BN and ReLU, and after the max-pooling
when that conv is followed by one (shared/CONTRACTS.md, shared/seed/README.md).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.vgg import cfgs as TORCHVISION_VGG_CFGS
from torchvision.models.vgg import make_layers

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnknownModelError(ValueError):
    """A model name that is not in the registry."""


class WeightsError(ValueError):
    """A weights file that cannot be loaded into the named model."""


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: everything the single builder needs."""

    name: str
    cfg: tuple[int | str, ...]          # conv widths; "M" = 2x2 max-pool, stride 2
    in_channels: int                    # image channels (1 grayscale, 3 RGB)
    input_hw: tuple[int, int]           # default input size (H, W), pixels
    num_classes: int                    # default class count
    pool_hw: tuple[int, int]            # adaptive average pool output before the classifier
    hidden: tuple[int, ...]             # classifier hidden widths (Linear, ReLU, Dropout each)
    dropout: float                      # classifier dropout probability
    mean: tuple[float, ...]             # normalisation of the [0,1] image, per channel
    std: tuple[float, ...]
    dataset: str | None = None          # dataset it is trained on, when shipped
    default_weights: str | None = None  # file under planner/weights/ loaded by default


@dataclass(frozen=True)
class PartitionSpec:
    """Partition point P of a model: the cut after conv P (and its pooling, if any)."""

    index: int              # P, 0-based conv index
    channels: int           # output channels of conv P
    after_pooling: bool     # the cut is after a max-pooling that follows conv P
    feature_end: int        # index into `features` where the tail starts
    conv_feature: int       # index into `features` of conv P (its BN follows at +1)
    cfg_index: int          # index into the spec's cfg of conv P
    height: int             # rows of the cut's feature map for the table's input size
    width: int              # columns of the cut's feature map

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the feature map at this cut."""
        return (self.channels, self.height, self.width)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"Unknown model {name!r}; known models: {', '.join(model_names())}") from None


register(ModelSpec(
    name="fmnist-vgg", cfg=(32, 32, "M", 64, 64, "M", 128, 128, "M"), in_channels=1,
    input_hw=(28, 28), num_classes=10, pool_hw=(3, 3), hidden=(256,), dropout=0.3,
    mean=(0.2860,), std=(0.3530,), dataset="fashion-mnist",
    default_weights="fmnist-vgg.pt"))
register(ModelSpec(
    name="vgg11_bn", cfg=tuple(TORCHVISION_VGG_CFGS["A"]), in_channels=3, input_hw=(224, 224),
    num_classes=1000, pool_hw=(7, 7), hidden=(4096, 4096), dropout=0.5,
    mean=IMAGENET_MEAN, std=IMAGENET_STD))
register(ModelSpec(
    name="vgg16_bn", cfg=tuple(TORCHVISION_VGG_CFGS["D"]), in_channels=3, input_hw=(224, 224),
    num_classes=1000, pool_hw=(7, 7), hidden=(4096, 4096), dropout=0.5,
    mean=IMAGENET_MEAN, std=IMAGENET_STD))


def partition_table(spec: ModelSpec, input_hw: tuple[int, int] | None = None) -> list[PartitionSpec]:
    """Partition points of a cfg for an input size (default: the spec's): the one walk of the
    cfg.  Feature indices follow torchvision's make_layers(batch_norm=True): conv, BN, ReLU
    per width, one module per "M"."""
    parts: list[PartitionSpec] = []
    h, w = input_hw or spec.input_hw
    pos = 0  # index into `features`
    cfg = spec.cfg
    for i, v in enumerate(cfg):
        if v == "M":
            pos += 1
            continue
        conv = pos
        pos += 3  # conv, bn, relu
        pooled = i + 1 < len(cfg) and cfg[i + 1] == "M"
        ph, pw = (h // 2, w // 2) if pooled else (h, w)
        parts.append(PartitionSpec(index=len(parts), channels=int(v), after_pooling=pooled,
                                   feature_end=pos + (1 if pooled else 0), conv_feature=conv,
                                   cfg_index=i, height=ph, width=pw))
        h, w = ph, pw
    return parts


def partition_shapes(spec: ModelSpec, input_hw: tuple[int, int] | None = None
                     ) -> list[tuple[int, int, int]]:
    """(C, H, W) of every partition's output for an input size (default: the spec's)."""
    return [p.shape for p in partition_table(spec, input_hw)]


def conv_widths(spec: ModelSpec) -> list[int]:
    """Output channels of each conv, in order (the widest C of each partition)."""
    return [p.channels for p in partition_table(spec)]


class SplitCNN(nn.Module):
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

    def partition(self, p: int) -> PartitionSpec:
        if not 0 <= p < len(self.partitions):
            raise ValueError(
                f"partition P must be in 0..{len(self.partitions) - 1} for {self.spec.name}, got {p}")
        return self.partitions[p]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 -> (N, C, H, W) float32, normalised."""
        return (images.float() / 255.0 - self.mean) / self.std

    def head(self, x: torch.Tensor, p: int) -> torch.Tensor:
        """(N, C, H, W) normalised input -> (N, C_p, H_p, W_p) feature map at P."""
        return self.features[: self.partition(p).feature_end](x)

    def tail(self, fm: torch.Tensor, p: int) -> torch.Tensor:
        """(N, C_p, H_p, W_p) feature map at P -> (N, num_classes) logits."""
        x = self.features[self.partition(p).feature_end:](fm)
        return self.classifier(torch.flatten(self.avgpool(x), 1))

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


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_weights_path(spec: ModelSpec) -> Path | None:
    if spec.default_weights is None:
        return None
    p = WEIGHTS_DIR / spec.default_weights
    return p if p.is_file() else None


def build_model(name: str, num_classes: int | None = None, weights: str | Path | None = None,
                use_default_weights: bool = True) -> SplitCNN:
    """Build a registered model in eval mode; load `weights`, else the shipped default."""
    spec = get_spec(name)
    model = SplitCNN(spec, num_classes)
    path = weights if weights is not None else (default_weights_path(spec) if use_default_weights else None)
    if path is not None:
        sd = load_state_dict_file(path)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise WeightsError(
                f"weights {str(path)!r} do not fit {name} with {model.num_classes} classes "
                f"(use --num-classes for another head): {str(e).splitlines()[0]}") from e
    elif spec.default_weights is not None and use_default_weights:
        log.warning("no trained weights for %s at %s; using random initialisation",
                    name, WEIGHTS_DIR / spec.default_weights)
    return model.eval()

