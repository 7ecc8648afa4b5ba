"""The device's network on torch: the planner's SplitCNN or GraphCNN (the default runtime)."""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from device.heads import Heads, Runtime, TimedPass
from planner.models import SplitCNN, build_model, default_weights_path, file_sha256, partition_table
from planner.pruning import channel_order


class TorchHeads(Heads):
    runtime = Runtime.TORCH

    def __init__(self, model: SplitCNN, weights_sha256: str = ""):
        super().__init__()
        self.model = model
        self.spec = model.spec
        self.input_hw = model.spec.input_hw
        self.num_classes = model.num_classes
        self.partitions = model.partitions
        self.weights_sha256 = weights_sha256
        self.version = f"torch {torch.__version__}, {torch.get_num_threads()} threads"

    @classmethod
    def build(cls, name: str, *, weights: str | None = None, num_classes: int | None = None,
              threads: int = 1) -> TorchHeads:
        torch.set_num_threads(threads)
        model = build_model(name, num_classes=num_classes, weights=weights)
        path = weights or default_weights_path(model.spec)
        return cls(model, file_sha256(path) if path else "")

    def at_input(self, input_hw: tuple[int, int]) -> TorchHeads:
        """The same network (VGG features and traced graphs are size-agnostic) with the partition
        table for `input_hw`."""
        if tuple(input_hw) == tuple(self.input_hw):
            return self
        other = copy.copy(self)
        other.input_hw = tuple(input_hw)
        other.partitions = partition_table(self.spec, other.input_hw)
        other._kept = {}
        return other

    def _input(self, image: np.ndarray) -> torch.Tensor:
        return self.model.preprocess(torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0))

    @torch.inference_mode()
    def logits(self, image: np.ndarray) -> np.ndarray:
        return self.model(self._input(image))[0].numpy()

    @torch.inference_mode()
    def head(self, image: np.ndarray, p: int) -> np.ndarray:
        self.partition(p)
        return self.model.head(self._input(image), p)[0].numpy()

    def order(self, p: int) -> tuple[int, ...]:
        return channel_order(self.model, p)

    @torch.inference_mode()
    def timed_pass(self, image: np.ndarray) -> TimedPass:
        model = self.model
        n = len(model.partitions)
        marks = [0.0] * n
        cpu = [0.0] * n
        maps = []
        c0, t0 = time.thread_time(), time.perf_counter()
        x = self._input(image)
        for k in range(n):                   # segment k ends at cut k
            x = model.segment(k)(x)
            marks[k] = time.perf_counter() - t0
            cpu[k] = time.thread_time() - c0
            maps.append((k, x[0]))
        model.segment(n)(x)                  # last cut -> logits
        full, full_cpu = time.perf_counter() - t0, time.thread_time() - c0
        return TimedPass(marks, full, [(p, fm.numpy()) for p, fm in maps], cpu, full_cpu)
