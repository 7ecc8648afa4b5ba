"""`make demo`: the cloud daemon as its own process, the device on Fashion-MNIST, a table."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cloud.daemon import CloudDaemon

DEFAULT_SCHEMES = ("device-only", "cloud-only", "1:8:4", "3:16:2", "3:64:4", "5:128:8")


def run_scheme(address: str, model: str, scheme: str, limit: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "device", "infer", "--cloud", address, "--model", model,
         "--scheme", scheme, "--dataset", "fashion-mnist", "--limit", str(limit), "--json", "--quiet"],
        capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"device failed for {scheme}: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device.demo", description=__doc__)
    parser.add_argument("--model", default="fmnist-vgg")
    parser.add_argument("--limit", type=int, default=500, help="test images per scheme")
    parser.add_argument("--schemes", nargs="+", default=list(DEFAULT_SCHEMES))
    args = parser.parse_args(argv)
    print(f"starting coinfer-cloud serve --model {args.model} --port 0 ...", flush=True)
    with CloudDaemon(["--model", args.model]) as cloud:
        print(f"cloud listening on {cloud.address}; device runs {args.limit} Fashion-MNIST test images "
              f"per scheme on loopback (no link or CPU constraint emulated)\n", flush=True)
        header = f"{'scheme':>12} {'top1':>7} {'p50_s':>9} {'p90_s':>9} {'bytes/img':>10} {'head_s':>9} {'rtt_s':>9}"
        print(header)
        print("-" * len(header))
        for scheme in args.schemes:
            s = run_scheme(cloud.address, args.model, scheme, args.limit)
            lat = s["latency_s"]
            print(f"{scheme:>12} {s['top1_accuracy']:>7.4f} {lat['p50']:>9.5f} {lat['p90']:>9.5f} "
                  f"{s['wire_bytes_mean']:>10.0f} {s['head_s_mean']:>9.5f} {s['rtt_s_mean']:>9.5f}", flush=True)
    print("\ncloud stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
