"""vgg16_bn forward, free then under a CPU quota, in one process:
`python -m bench.quota_probe FRACTION REPEATS`.

Builds `planner.models.build_model("vgg16_bn", use_default_weights=False)` with one torch
thread, times REPEATS forwards of a 1x3x224x224 input after one warm-up, confines itself
with `device.cpu_quota.confine_to_cpu_fraction(FRACTION)`, times them again, releases the
quota and prints one JSON line {"free_s": [...], "confined_s": [...]} (seconds per forward)
with the quota it got ("quota_us", "period_us", "cgroup": "v1" or "v2").
Run as a child by `bench.netns` so the quota never touches the benchmark's own process.
"""
from __future__ import annotations

import json
import sys
import time

MODEL = "vgg16_bn"
INPUT_SHAPE = (1, 3, 224, 224)     # (N, C, H, W) float32


def timed_forwards(model, x, repeats: int) -> list[float]:
    import torch
    with torch.inference_mode():
        model(x)                                           # warm-up
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.quota_probe FRACTION REPEATS", file=sys.stderr)
        return 2
    fraction, repeats = float(args[0]), int(args[1])
    import torch

    from device.cpu_quota import confine_to_cpu_fraction
    from planner.models import build_model
    torch.set_num_threads(1)
    model = build_model(MODEL, use_default_weights=False).eval()
    x = torch.randn(*INPUT_SHAPE)
    free = timed_forwards(model, x, repeats)
    quota = confine_to_cpu_fraction(fraction)
    try:
        confined = timed_forwards(model, x, repeats)
    finally:
        quota.release()
    print(json.dumps({"free_s": free, "confined_s": confined, "quota_us": quota.quota_us,
                      "period_us": quota.period_us, "cgroup": f"v{quota.layout.version.value}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
