"""`make demo`: cloud daemons as their own processes, devices as commands, two tables.

1. fmnist-vgg (the shipped default, with its bank of fine-tuned tails): both single ends,
   fixed split schemes (their fine-tuned accuracy: `tail` = bank) and `auto` under an
   accuracy requirement, compared with both single ends as measured in the same run.
2. vgg16_bn at 224x224 (seeded random weights; the seed's recorded accuracies): `auto` under
   a latency requirement picks a split, compared with both single ends. fmnist-vgg's images
   are too small for any accurate split to win (docs/bank.md), so the split choice is shown
   here. Needs ../shared/seed and the emulated constraints.

As root (namespaces and cgroups available) each device runs under a CPU quota (QUOTA of
one CPU, about a Raspberry Pi 4 at 0.1) behind a tc-shaped uplink; without root it says
that the constraints are not emulated, runs part 1 on loopback and skips part 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

from cloud.daemon import CloudDaemon
from device.cpu_quota import require_cpu_quota
from testbed import ShapedLink, require_net_admin

FIXED_SCHEMES = ("1:8:4", "3:16:2")   # in the shipped bank: their fine-tuned tails


def constraints_available() -> str | None:
    """None when a shaped link and a CPU quota can be made here, else why not."""
    try:
        require_net_admin()
        require_cpu_quota()
    except Exception as e:  # noqa: BLE001 - any reason means: run unconstrained
        return str(e).splitlines()[0]
    return None


def run_scheme(prefix: list[str], address: str, model: str, scheme: str, limit: int, extra: list[str],
               images: list[str] | None = None) -> dict:
    source = images if images else ["--dataset", "fashion-mnist", "--limit", str(limit)]
    argv = [*prefix, sys.executable, "-m", "device", "infer", "--cloud", address, "--model", model,
            "--scheme", scheme, *source, "--json", "--quiet", *extra]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"device failed for {scheme}: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(prefix: list[str], address: str, model: str, schemes: list[str], limit: int, extra: list[str],
          auto_args: list[str], images: list[str] | None = None) -> dict[str, dict]:
    """Run each scheme as its own device command and print one row each; returns the summaries."""
    header = (f"{'scheme':>12} {'ran':>14} {'tail':>10} {'top1':>7} {'mean_s':>9} {'p50_s':>9} {'bytes/img':>10} "
              f"{'head_s':>9} {'rtt_s':>9} {'bw_Mbps':>8}")
    print(header)
    print("-" * len(header))
    rows = {}
    for scheme in schemes:
        more = list(auto_args) if scheme == "auto" else []
        s = run_scheme(prefix, address, model, scheme, limit, extra + more, images)
        rows[scheme] = s
        lat, bw, acc = s["latency_s"], s.get("bandwidth_mbps"), s["top1_accuracy"]
        print(f"{scheme:>12} {s['scheme']:>14} {s.get('tail') or '-':>10} {'n/a' if acc is None else f'{acc:.4f}':>7} "
              f"{lat['mean']:>9.5f} {lat['p50']:>9.5f} {s['wire_bytes_mean']:>10.0f} {s['head_s_mean']:>9.5f} "
              f"{s['rtt_s_mean']:>9.5f} {'' if bw is None else f'{bw:.3f}':>8}", flush=True)
    return rows


def compare(rows: dict[str, dict]) -> str:
    """auto against both single ends, as measured in this run (means: the per-frame cost of a stream)."""
    dev, cloud, auto = (rows[k]["latency_s"]["mean"] for k in ("device-only", "cloud-only", "auto"))
    return (f"auto ran {rows['auto']['scheme_counts']}: mean {auto:.5f} s = {auto / dev:.2f} x device-only "
            f"({dev:.5f} s) and {auto / cloud:.2f} x cloud-only ({cloud:.5f} s)")


@contextlib.contextmanager
def setting(constrained: bool, rate_mbps: float, quota: float, why_not: str | None):
    """(host, cloud prefix, device prefix, device extra args, description) for one part."""
    if constrained:
        with ShapedLink(rate_mbps) as link:
            yield (link.cloud_addr, link.exec_prefix(link.cloud_ns), link.exec_prefix(link.device_ns),
                   ["--cpu-quota", f"{quota:g}"],
                   f"device in namespace {link.device_ns} under a {quota:g}-CPU quota, uplink shaped to "
                   f"{rate_mbps:g} Mbps (tc tbf), cloud in {link.cloud_ns}")
    else:
        yield "127.0.0.1", [], [], [], f"loopback; the device CPU quota and link shaping are NOT emulated ({why_not})"


def fmnist_part(args, why_not: str | None) -> None:
    schemes = ["device-only", "cloud-only", *args.schemes, "auto"]
    with setting(why_not is None, args.rate_mbps, args.quota, why_not) as (host, cprefix, dprefix, extra, where):
        print(f"== {args.model}: starting coinfer-cloud serve --model {args.model} (with its shipped bank) ...",
              flush=True)
        with CloudDaemon(["--model", args.model], host=host, prefix=cprefix) as cloud:
            print(f"cloud listening on {cloud.address}; {where}.\n{args.limit} Fashion-MNIST test images per "
                  f"scheme; split schemes run the cloud's fine-tuned tail (tail = bank); auto = the fastest scheme "
                  f"losing at most {args.max_accuracy_loss:g} top-1 accuracy, planned from live measurements over "
                  f"the cloud's bank.\n", flush=True)
            rows = table(dprefix, cloud.address, args.model, schemes, args.limit, extra,
                         ["--max-accuracy-loss", str(args.max_accuracy_loss)])
    print(f"\n{compare(rows)}; top-1 {rows['auto']['top1_accuracy']:.4f} vs "
          f"{rows['device-only']['top1_accuracy']:.4f} unmodified.")
    print("For fmnist-vgg no split wins within a 0.02-0.05 accuracy loss at any uplink from 0.02 to 10 Mbps or "
          "device speed from 1% to 100% of a core: a Fashion-MNIST image is ~540 bytes compressed, and the "
          "splits that send less lose more accuracy (numbers: BENCHMARKS.md, bank; docs/bank.md).\n", flush=True)


def vgg_part(args, why_not: str | None) -> None:
    from bench.link import SEED_DATASET, seed_db
    from bench.linkbench.images import synthetic_images
    if why_not is not None:
        print(f"== vgg16_bn split demo skipped: it needs the emulated constraints ({why_not}).")
        return
    try:
        import tempfile
        work = Path(tempfile.mkdtemp(prefix="coinfer-demo-"))
        db = seed_db(work / "seed.sqlite")
    except SystemExit as e:
        print(f"== vgg16_bn split demo skipped: {e}")
        return
    images = synthetic_images(work, args.vgg_limit, (224, 224), 3)
    flags = ["--num-classes", "196"]
    with setting(True, args.vgg_rate_mbps, args.quota, None) as (host, cprefix, dprefix, extra, where):
        print("== vgg16_bn at 224x224 (seeded random weights: timing and bytes only; accuracies are the seed's "
              "recorded ones): starting its cloud ...", flush=True)
        with CloudDaemon(["--model", "vgg16_bn", *flags, "--threads", "1"], host=host, prefix=cprefix) as cloud:
            print(f"cloud listening on {cloud.address}; {where}.\n{args.vgg_limit} images per scheme; auto = the "
                  f"most accurate scheme within {args.vgg_latency_ratio:g} x the faster single end, planned over "
                  f"the seed's accuracy database (Opt-CoInfer's VGG-16-BN on Stanford Cars).\n", flush=True)
            rows = table(dprefix, cloud.address, "vgg16_bn", ["device-only", "cloud-only", "auto"], args.vgg_limit,
                         extra + flags, ["--latency-ratio", str(args.vgg_latency_ratio), "--db", str(db),
                                         "--recipe", "seed-import", "--dataset-name", SEED_DATASET],
                         images=images)
    print(f"\n{compare(rows)}.", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__)
    parser.add_argument("--model", default="fmnist-vgg")
    parser.add_argument("--limit", type=int, default=200, help="test images per scheme")
    parser.add_argument("--rate-mbps", type=float, default=0.05, help="shaped uplink rate (root only)")
    parser.add_argument("--quota", type=float, default=0.1, help="device CPU fraction (root only)")
    parser.add_argument("--max-accuracy-loss", type=float, default=0.02, help="requirement of `auto`")
    parser.add_argument("--schemes", nargs="+", default=list(FIXED_SCHEMES), help="fixed schemes to compare")
    parser.add_argument("--vgg-rate-mbps", type=float, default=0.5, help="vgg16_bn part: shaped uplink rate")
    parser.add_argument("--vgg-limit", type=int, default=3, help="vgg16_bn part: images per scheme")
    parser.add_argument("--vgg-latency-ratio", type=float, default=0.7, help="vgg16_bn part: auto's requirement")
    parser.add_argument("--no-vgg", action="store_true", help="skip the vgg16_bn split demo")
    parser.add_argument("--loopback", action="store_true", help="do not emulate constraints even as root")
    args = parser.parse_args(argv)
    why_not = "--loopback given" if args.loopback else constraints_available()
    fmnist_part(args, why_not)
    if not args.no_vgg:
        vgg_part(args, why_not)
    print("clouds stopped; namespaces removed." if why_not is None else "clouds stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
