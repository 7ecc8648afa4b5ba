"""Generated input images for models without a dataset here: timing and bytes only."""
from __future__ import annotations

from pathlib import Path


def synthetic_images(directory: Path, n: int, hw: tuple[int, int], channels: int, seed: int = 0) -> list[str]:
    """Smooth colour gradients with mild noise, saved as PNG: for timing and bytes only, no labels."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        planes = []
        for _ in range(channels):
            a, b, c = rng.uniform(-1, 1, 3)
            plane = 128 + 100 * np.sin(a * xx / w * 6 + b * yy / h * 6 + c * 3) + rng.normal(0, 12, (h, w))
            planes.append(np.clip(plane, 0, 255).astype(np.uint8))
        arr = planes[0] if channels == 1 else np.stack(planes, axis=-1)
        p = directory / f"synthetic-{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    return paths
