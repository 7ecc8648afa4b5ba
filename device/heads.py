"""What runs on the device, behind one interface whatever the runtime: the network's head
for any partition, the whole network, the channel-importance order of each cut and one
timed pass through every cut.  `torch` (device.torch_heads) runs the planner's SplitCNN;
`onnx` (device.onnx_heads) runs a `coinfer-plan export` on ONNX Runtime and never imports
torch.  Nothing here imports either: the runtime chosen is the only one loaded."""
from __future__ import annotations

import enum
import importlib.util
from dataclasses import dataclass

import numpy as np

from planner.registry import ModelSpec, PartitionSpec
from planner.scheme import kept_channels


class Runtime(enum.Enum):
    TORCH = "torch"
    ONNX = "onnx"


@dataclass(frozen=True)
class TimedPass:
    """One pass through the network: seconds from the uint8 image to each cut (cumulative),
    to the logits, the same in this thread's CPU seconds (what a CPU quota rations; one
    intra-op thread runs on the calling thread), and the cuts' feature maps
    [(P, (C, H, W) float32)]."""

    head_s: list[float]
    full_s: float
    maps: list[tuple[int, np.ndarray]]
    head_cpu_s: list[float]
    full_cpu_s: float


class Heads:
    """The device's network.  Subclasses set the attributes and implement the three runs."""

    runtime: Runtime
    spec: ModelSpec                   # the registry entry (input channels, dataset, name)
    input_hw: tuple[int, int]         # (H, W) the network takes
    num_classes: int
    partitions: list[PartitionSpec]   # the cuts, with their (C, H, W) at input_hw
    weights_sha256: str               # "" for a random initialisation
    version: str                      # runtime and its version (part of the device-time cache key)

    def __init__(self) -> None:
        self._kept: dict[tuple[int, int], np.ndarray] = {}

    def partition(self, p: int) -> PartitionSpec:
        if not 0 <= p < len(self.partitions):
            raise ValueError(f"partition P must be in 0..{len(self.partitions) - 1} for {self.spec.name}, got {p}")
        return self.partitions[p]

    def at_input(self, input_hw: tuple[int, int]) -> Heads:
        """This network for images of `input_hw` (the size the cloud serves)."""
        if tuple(input_hw) == tuple(self.input_hw):
            return self
        raise ValueError(f"the cloud serves {input_hw[0]}x{input_hw[1]} images; this {self.runtime.value} network "
                         f"takes {self.input_hw[0]}x{self.input_hw[1]}")

    def logits(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) uint8 image -> (num_classes,) logits of the whole network."""
        raise NotImplementedError

    def head(self, image: np.ndarray, p: int) -> np.ndarray:
        """(C, H, W) uint8 image -> (C_p, H_p, W_p) float32 feature map at cut P."""
        raise NotImplementedError

    def order(self, p: int) -> tuple[int, ...]:
        """Cut P's channels, most important first (planner.pruning.channel_order)."""
        raise NotImplementedError

    def timed_pass(self, image: np.ndarray) -> TimedPass:
        raise NotImplementedError

    def kept(self, p: int, c: int) -> np.ndarray:
        """The wire channel indices of P:C (ascending), as the cloud derives them."""
        key = (p, c)
        if key not in self._kept:
            self._kept[key] = np.asarray(kept_channels(self.order(p), c, p, self.spec.name), dtype=np.uint32)
        return self._kept[key]


def torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:          # an import hook that refuses it
        return False


def default_runtime() -> Runtime:
    """torch where it is installed (the full environment), else ONNX Runtime (`.[device]`)."""
    return Runtime.TORCH if torch_installed() else Runtime.ONNX


def load_heads(runtime: Runtime | None, model: str, *, weights: str | None = None, num_classes: int | None = None,
               export: str | None = None, threads: int = 1) -> Heads:
    """The device's network on `runtime`: torch from the registry (and `weights`), onnx from
    the `export` directory, which must be of `model`; None: `default_runtime()`."""
    runtime = runtime or default_runtime()
    if runtime is Runtime.ONNX:
        from device.onnx_heads import OnnxHeads
        if export is None:
            why = "" if torch_installed() else "torch is not installed here, so "
            raise ValueError(f"{why}--runtime onnx needs --export DIR, written by `coinfer-plan export --model "
                             f"{model} --out DIR` where torch is installed")
        if weights is not None or num_classes is not None:
            raise ValueError("--runtime onnx takes the weights from --export; drop --weights/--num-classes "
                             "(export them with `coinfer-plan export --weights FILE`)")
        heads = OnnxHeads(export, threads=threads)
        if heads.spec.name != model:
            raise ValueError(f"--export {export!r} holds {heads.spec.name}, not --model {model}")
        return heads
    if export is not None:
        raise ValueError("--export is for --runtime onnx")
    from device.torch_heads import TorchHeads
    return TorchHeads.build(model, weights=weights, num_classes=num_classes, threads=threads)
