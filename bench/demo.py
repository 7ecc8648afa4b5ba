"""`make demo`: the cloud daemon as its own process, the device on Fashion-MNIST, a table.

As root (namespaces and cgroups available) the device runs under a CPU quota (QUOTA of
one CPU, about a Raspberry Pi 4 at 0.1) behind a tc-shaped uplink (RATE Mbps), so the live
choice (`auto`) can be compared with both single-end schemes on a constrained system.
Without root it says that the constraints are not emulated and runs on loopback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys

from cloud.daemon import CloudDaemon
from device.cpu_quota import require_cpu_quota
from testbed import ShapedLink, require_net_admin

FIXED_SCHEMES = ("1:8:4", "3:16:2", "5:128:8")


def constraints_available() -> str | None:
    """None when a shaped link and a CPU quota can be made here, else why not."""
    try:
        require_net_admin()
        require_cpu_quota()
    except Exception as e:  # noqa: BLE001 - any reason means: run unconstrained
        return str(e).splitlines()[0]
    return None


def run_scheme(prefix: list[str], address: str, model: str, scheme: str, limit: int, extra: list[str]) -> dict:
    argv = [*prefix, sys.executable, "-m", "device", "infer", "--cloud", address, "--model", model,
            "--scheme", scheme, "--dataset", "fashion-mnist", "--limit", str(limit), "--json", "--quiet", *extra]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"device failed for {scheme}: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__)
    parser.add_argument("--model", default="fmnist-vgg")
    parser.add_argument("--limit", type=int, default=200, help="test images per scheme")
    parser.add_argument("--rate-mbps", type=float, default=0.05, help="shaped uplink rate (root only)")
    parser.add_argument("--quota", type=float, default=0.1, help="device CPU fraction (root only)")
    parser.add_argument("--max-accuracy-loss", type=float, default=0.01, help="requirement of `auto`")
    parser.add_argument("--schemes", nargs="+", default=list(FIXED_SCHEMES), help="fixed schemes to compare")
    parser.add_argument("--loopback", action="store_true", help="do not emulate constraints even as root")
    args = parser.parse_args(argv)
    why_not = "--loopback given" if args.loopback else constraints_available()
    schemes = ["device-only", "cloud-only", *args.schemes, "auto"]
    with contextlib.ExitStack() as stack:
        if why_not is None:
            link = stack.enter_context(ShapedLink(args.rate_mbps))
            host, cloud_prefix, dev_prefix = link.cloud_addr, link.exec_prefix(link.cloud_ns), link.exec_prefix(link.device_ns)
            extra = ["--cpu-quota", str(args.quota)]
            where = (f"device in namespace {link.device_ns} under a {args.quota:g}-CPU quota, uplink shaped to "
                     f"{args.rate_mbps:g} Mbps (tc tbf), cloud in {link.cloud_ns}")
        else:
            host, cloud_prefix, dev_prefix, extra = "127.0.0.1", [], [], []
            where = f"loopback; the device CPU quota and link shaping are NOT emulated ({why_not})"
        print(f"starting coinfer-cloud serve --model {args.model} ...", flush=True)
        cloud = stack.enter_context(CloudDaemon(["--model", args.model], host=host, prefix=cloud_prefix))
        print(f"cloud listening on {cloud.address}; {where}.\n"
              f"{args.limit} Fashion-MNIST test images per scheme; auto = fastest scheme losing at most "
              f"{args.max_accuracy_loss:g} top-1 accuracy, planned from live measurements.\n", flush=True)
        header = (f"{'scheme':>12} {'ran':>14} {'top1':>7} {'mean_s':>9} {'p50_s':>9} {'bytes/img':>10} "
                  f"{'head_s':>9} {'rtt_s':>9} {'bw_Mbps':>8}")
        print(header)
        print("-" * len(header))
        rows = {}
        for scheme in schemes:
            more = ["--max-accuracy-loss", str(args.max_accuracy_loss)] if scheme == "auto" else []
            s = run_scheme(dev_prefix, cloud.address, args.model, scheme, args.limit, extra + more)
            rows[scheme] = s
            lat, bw = s["latency_s"], s.get("bandwidth_mbps")
            print(f"{scheme:>12} {s['scheme']:>14} {s['top1_accuracy']:>7.4f} {lat['mean']:>9.5f} {lat['p50']:>9.5f} "
                  f"{s['wire_bytes_mean']:>10.0f} {s['head_s_mean']:>9.5f} {s['rtt_s_mean']:>9.5f} "
                  f"{'' if bw is None else f'{bw:.3f}':>8}", flush=True)
    # means: under a CPU quota most short frames run at full speed and a few wait for the
    # next CFS period; the mean is the per-frame cost of a stream (what auto plans with)
    best_single = min(rows["device-only"]["latency_s"]["mean"], rows["cloud-only"]["latency_s"]["mean"])
    auto = rows["auto"]
    print(f"\nauto ran {auto['scheme_counts']}: mean {auto['latency_s']['mean']:.5f} s = "
          f"{auto['latency_s']['mean'] / best_single:.2f} x the best single-end mean ({best_single:.5f} s); "
          f"top-1 {auto['top1_accuracy']:.4f} vs {rows['device-only']['top1_accuracy']:.4f} unmodified.")
    print("cloud stopped; namespaces removed." if why_not is None else "cloud stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
