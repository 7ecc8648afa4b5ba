"""Shared helpers for the planner tests: the seed scenario and a small synthetic profile."""
from __future__ import annotations

from pathlib import Path

import pytest

from planner.profile import PartitionProfile, Profile

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seed"
SEED_PROFILE = "vgg16_bn_stanford_cars.profile.json"


def seed_path(name: str) -> Path:
    path = SEED_DIR / name
    if not path.is_file():
        pytest.skip(f"seed scenario file {path} is absent (shared/seed/ not checked out beside the repo)")
    return path


def tiny_profile(**kw) -> Profile:
    """Two partitions of a made-up model; round numbers so expected latencies are exact."""
    parts = (
        PartitionProfile(0, 8, False, 10, 10, device_head_s=0.1, cloud_tail_s=0.01),
        PartitionProfile(1, 16, True, 5, 5, device_head_s=0.3, cloud_tail_s=0.005),
    )
    base = dict(model="tiny", dataset="toy", num_classes=10, base_top1_error=0.10,
                input_shape=(1, 10, 10), cloud_only_upload_bytes=1000, device_full_model_s=1.0,
                cloud_full_model_s=0.02, partitions=parts)
    base.update(kw)
    return Profile(**base)
