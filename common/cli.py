"""Argument types more than one command line takes."""
from __future__ import annotations

import argparse


def parse_hw(text: str) -> tuple[int, int]:
    """`--input-size`: "224" (square) or "HxW" -> (H, W), both positive."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 224 or 240x320, got {text!r}")
    return parts[0], parts[1]
