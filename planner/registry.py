"""Model registry and partition tables, without torch (the ONNX device reads them too).

Two builder kinds, each a table consumed by one builder:
- `vgg-cfg`: a torchvision-style `cfg` of conv widths and "M" for 2x2 max-pooling, plus
  input and classifier settings (planner.models.SplitCNN).  The partition point P is the
  cut after conv P, its BN and ReLU, and after the max-pooling when that conv is followed
  by one (shared/CONTRACTS.md, shared/seed/README.md); the cfg walk below needs no torch.
- `torchvision-graph`: a torchvision architecture by name (planner.graph_models.GraphCNN);
  P indexes the cuts the torch.fx finder (planner.graph) yields, in execution order.  Its
  partition table needs torch (imported only when such a table is asked for).
"""
from __future__ import annotations

import enum
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's VGG cfgs "A" (vgg11) and "D" (vgg16), copied so that the registry needs no
# torch; tests/test_models.py checks them against torchvision's
VGG_CFGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class UnknownModelError(ValueError):
    """A model name that is not in the registry."""


class NoDatasetError(ValueError):
    """A model without a dataset of its own, and no --dataset."""


class UnsupportedModelError(ValueError):
    """A model that a command cannot work on (training, fine-tuning, banks: no trained weights)."""


class WeightsError(ValueError):
    """A weights file that cannot be loaded into the named model."""


class WeightsMismatch(ValueError):
    """Two sides (a bank, an export, a device, a cloud) built from different weights."""

    def __init__(self, theirs_sha256: str, ours_sha256: str, where: str, what: str = "bank", hint: str = ""):
        super().__init__(f"{where}: {what} built from weights sha256 {theirs_sha256}, but the network's "
                         f"weights are sha256 {ours_sha256}" + (f"; {hint}" if hint else ""))
        self.theirs_sha256 = theirs_sha256
        self.ours_sha256 = ours_sha256


class BuilderKind(enum.Enum):
    """Which builder makes a registry entry's network (and walks its partition table)."""

    VGG_CFG = "vgg-cfg"                      # planner.models.SplitCNN from `cfg`
    TORCHVISION_GRAPH = "torchvision-graph"  # planner.graph_models.GraphCNN from `arch` (torchvision's
                                             # or the project's own, planner.graph_archs.ARCHS)


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
    builder: BuilderKind = BuilderKind.VGG_CFG  # which builder makes the network
    arch: str | None = None             # architecture name (TORCHVISION_GRAPH): torchvision's or planner.graph_archs'


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
    node: str = ""          # torch.fx graph node whose output is the cut ("" when unknown)

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


def model_names(builder: BuilderKind | None = None) -> list[str]:
    """Registered names, sorted; only those of one builder kind when `builder` is given."""
    return sorted(n for n, s in _REGISTRY.items() if builder is None or s.builder is builder)


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
    name="vgg11_bn", cfg=VGG_CFGS["A"], in_channels=3, input_hw=(224, 224),
    num_classes=1000, pool_hw=(7, 7), hidden=(4096, 4096), dropout=0.5,
    mean=IMAGENET_MEAN, std=IMAGENET_STD))
register(ModelSpec(
    name="vgg16_bn", cfg=VGG_CFGS["D"], in_channels=3, input_hw=(224, 224),
    num_classes=1000, pool_hw=(7, 7), hidden=(4096, 4096), dropout=0.5,
    mean=IMAGENET_MEAN, std=IMAGENET_STD))

# a project-defined graph architecture (planner.graph_archs): cuts from the torch.fx finder at
# the stem and the 8 block outputs; trained, evaluated and banked like fmnist-vgg
register(ModelSpec(
    name="fmnist-resnet", cfg=(), in_channels=1, input_hw=(28, 28), num_classes=10, pool_hw=(1, 1),
    hidden=(), dropout=0.0, mean=(0.2860,), std=(0.3530,), dataset="fashion-mnist",
    default_weights="fmnist-resnet.pt", builder=BuilderKind.TORCHVISION_GRAPH, arch="small_resnet18_gray"))


# torchvision classification architectures served by their torchvision name: random init
# (seeded) unless --weights; 224x224, 1000 classes and ImageNet's statistics by default.  Each
# is checked cut by cut in tests/test_graph_cuts.py (the finder assumes (N, C, H, W) convnets:
# transformers such as vit_b_16 or swin_t are not listed)
GRAPH_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2", "mobilenet_v3_small",
               "mobilenet_v3_large", "efficientnet_b0")
MORE_GRAPH_ARCHS = ("resnet152", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf", "regnet_y_400mf",
                    "shufflenet_v2_x1_0", "squeezenet1_1", "densenet121", "mnasnet1_0", "convnext_tiny",
                    "alexnet", "vgg11", "vgg16")
for _arch in GRAPH_ARCHS + MORE_GRAPH_ARCHS:
    register(ModelSpec(
        name=_arch, cfg=(), in_channels=3, input_hw=(224, 224), num_classes=1000, pool_hw=(1, 1),
        hidden=(), dropout=0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        builder=BuilderKind.TORCHVISION_GRAPH, arch=_arch))


def partition_table(spec: ModelSpec, input_hw: tuple[int, int] | None = None) -> list[PartitionSpec]:
    """Partition points of a model for an input size (default: the spec's), by its builder kind."""
    return _PARTITION_WALKS[spec.builder](spec, tuple(input_hw or spec.input_hw))


def _graph_partition_table(spec: ModelSpec, input_hw: tuple[int, int]) -> list[PartitionSpec]:
    """The torch.fx finder's cuts (imports torch: only graph models need it)."""
    from planner.graph_models import graph_partition_table
    return graph_partition_table(spec, input_hw)


def _cfg_partition_table(spec: ModelSpec, input_hw: tuple[int, int]) -> list[PartitionSpec]:
    """Partition points of a cfg for an input size: the one walk of the
    cfg.  Feature indices follow torchvision's make_layers(batch_norm=True): conv, BN, ReLU
    per width, one module per "M"."""
    parts: list[PartitionSpec] = []
    h, w = input_hw
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
        end = pos + (1 if pooled else 0)
        parts.append(PartitionSpec(index=len(parts), channels=int(v), after_pooling=pooled,
                                   feature_end=end, conv_feature=conv, cfg_index=i, height=ph, width=pw,
                                   node=f"features_{end - 1}"))   # torch.fx's name for that module's node
        h, w = ph, pw
    return parts


_PARTITION_WALKS = {BuilderKind.VGG_CFG: _cfg_partition_table,
                    BuilderKind.TORCHVISION_GRAPH: _graph_partition_table}


def partition_shapes(spec: ModelSpec, input_hw: tuple[int, int] | None = None
                     ) -> list[tuple[int, int, int]]:
    """(C, H, W) of every partition's output for an input size (default: the spec's)."""
    return [p.shape for p in partition_table(spec, input_hw)]


def conv_widths(spec: ModelSpec) -> list[int]:
    """Output channels of each conv, in order (the widest C of each partition)."""
    return [p.channels for p in partition_table(spec)]


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
