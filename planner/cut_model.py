"""What every splittable network shares, whichever builder made it (`SplitCNN` for VGG cfgs,
`GraphCNN` for torchvision graphs): its cut table and its input normalisation."""
from __future__ import annotations

import torch
from torch import nn

from planner.registry import ModelSpec, PartitionSpec


class CutModel(nn.Module):
    """Subclasses set `spec`, `partitions` (the cut table), `mean` and `std` ((1, C, 1, 1))."""

    spec: ModelSpec
    partitions: list[PartitionSpec]

    def partition(self, p: int) -> PartitionSpec:
        if not 0 <= p < len(self.partitions):
            raise ValueError(
                f"partition P must be in 0..{len(self.partitions) - 1} for {self.spec.name}, got {p}")
        return self.partitions[p]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 -> (N, C, H, W) float32, normalised."""
        return (images.float() / 255.0 - self.mean) / self.std
