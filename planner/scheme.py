"""Scheme notation of shared/CONTRACTS.md: `P:C:B`, `device-only`, `cloud-only`."""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Sequence


class SchemeError(ValueError):
    """A scheme string or value that does not fit the contract's notation."""


class Mode(enum.Enum):
    SPLIT = "split"              # P:C:B, head on the device, tail in the cloud
    DEVICE_ONLY = "device-only"  # whole network on the device, nothing sent
    CLOUD_ONLY = "cloud-only"    # input image sent losslessly, cloud runs it all


MIN_BITS = 1
MAX_BITS = 8
_SPLIT_RE = re.compile(r"^\s*(\d+):(\d+):(\d+)\s*$")


@dataclass(frozen=True, order=True)
class Scheme:
    """One collaborative-inference scheme.

    For SPLIT: `partition` is P (0-based conv index of the cut), `channels` C (kept
    channels, >= 1) and `bits` B (1..8). Single-end schemes carry zeros there.
    """

    mode: Mode = Mode.SPLIT
    partition: int = 0   # P
    channels: int = 0    # C
    bits: int = 0        # B

    def __post_init__(self) -> None:
        if self.mode is Mode.SPLIT:
            if self.partition < 0:
                raise SchemeError(f"partition P must be >= 0, got {self.partition}")
            if self.channels < 1:
                raise SchemeError(f"channels C must be >= 1, got {self.channels}")
            if not MIN_BITS <= self.bits <= MAX_BITS:
                raise SchemeError(f"bits B must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")

    @classmethod
    def split(cls, partition: int, channels: int, bits: int) -> "Scheme":
        return cls(Mode.SPLIT, partition, channels, bits)

    @classmethod
    def parse(cls, text: str) -> "Scheme":
        """Parse `P:C:B`, `device-only` or `cloud-only`."""
        t = text.strip()
        for mode in (Mode.DEVICE_ONLY, Mode.CLOUD_ONLY):
            if t == mode.value:
                return cls(mode)
        m = _SPLIT_RE.match(t)
        if not m:
            raise SchemeError(
                f"expected a scheme `P:C:B` (e.g. 2:16:4), `device-only` or `cloud-only`, got {text!r}")
        return cls.split(*(int(g) for g in m.groups()))

    @property
    def is_split(self) -> bool:
        return self.mode is Mode.SPLIT

    def __str__(self) -> str:
        if self.mode is Mode.SPLIT:
            return f"{self.partition}:{self.channels}:{self.bits}"
        return self.mode.value


DEVICE_ONLY = Scheme(Mode.DEVICE_ONLY)
CLOUD_ONLY = Scheme(Mode.CLOUD_ONLY)


def kept_channels(order: Sequence[int], channels: int, partition: int, model_name: str) -> tuple[int, ...]:
    """The first `channels` of an importance order (most important first), in ascending
    original order: both ends derive a scheme's wire channels so from the same order."""
    if not 1 <= channels <= len(order):
        raise SchemeError(f"expected channels C in 1..{len(order)} for partition {partition} "
                          f"of {model_name}, got {channels}")
    return tuple(sorted(order[:channels]))
