"""`make bench-netns` (root): the link testbed measured, written to bench/results/netns.md.

    python -m bench.netns [--rates 0.05 0.5 1 2] [--seconds 3] [--repeats 3] [--quota 0.1]

1. TCP goodput over a `testbed.ShapedLink` against the tbf rate: bulk transfers device ->
   cloud, receiver-side payload bytes from first to last byte (`testbed.goodput`).
2. The slowdown of a vgg16_bn forward under the device's CPU quota
   (`device.cpu_quota.confine_to_cpu_fraction`), in a child process (`bench.quota_probe`).
3. What this kernel offers: its release and whether netem (delay/loss) could be set up.
How to read the figures: docs/benchmarks-notes.md#netns.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from bench import common
from testbed import ShapedLink, ShapingUnavailable, TbfShape, cleanup_stale
from testbed.goodput import measure_goodput
from testbed.tbf import FRAME_BYTES, TCP_PAYLOAD_PER_FRAME

ROOT = Path(__file__).resolve().parents[1]
PROBE_TIMEOUT_S = 600.0


def measure_quota_slowdown(fraction: float = 0.1, repeats: int = 3) -> dict:
    """vgg16_bn forward (1x3x224x224, one thread) without and then under the CPU quota, one process."""
    proc = subprocess.run([sys.executable, "-m", "bench.quota_probe", str(fraction), str(repeats)],
                          cwd=ROOT, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"quota probe failed: {proc.stderr.strip()[-500:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    free, confined = statistics.median(rec["free_s"]), statistics.median(rec["confined_s"])
    return {"fraction": fraction, "free_s": free, "confined_s": confined, "ratio": confined / free,
            "repeats": repeats, "quota_us": rec["quota_us"], "period_us": rec["period_us"],
            "cgroup": rec["cgroup"]}


def netem_available() -> str:
    """'yes', or 'no (<reason>)': whether a link with a netem delay can be built here."""
    try:
        with ShapedLink(1.0, delay_ms=1.0):
            return "yes"
    except ShapingUnavailable as e:
        return f"no, tc refused the netem qdisc ({str(e).rpartition('): ')[2].strip()[:200]})"


def goodput_lines(rates: list[float], seconds: float, repeats: int) -> list[str]:
    lines = ["### TCP goodput over the shaped veth vs the tbf rate", "",
             f"Bulk transfer device -> cloud of ~{seconds:g} s, {repeats} per rate, receiver-side payload "
             f"bytes from first to last byte. Expected goodput = rate x {TCP_PAYLOAD_PER_FRAME}/{FRAME_BYTES} "
             "(TCP/IP/Ethernet headers of full frames).", "",
             "| tc rate Mbps | burst B | latency ms | goodput Mbps (median) | min..max | "
             "goodput / rate | goodput / expected |", "|---:|---:|---:|---:|---|---:|---:|"]
    for rate in rates:
        shape = TbfShape(rate)
        g = measure_goodput(rate, seconds, repeats)
        med = statistics.median(g)
        lines.append(f"| {rate:g} | {shape.burst_bytes} | {shape.latency_ms} | {med:.4f} | "
                     f"{min(g):.4f}..{max(g):.4f} | {med / rate:.3f} | "
                     f"{med / shape.expected_goodput_mbps:.3f} |")
        print(lines[-1], flush=True)
    return lines


def quota_lines(fraction: float) -> list[str]:
    q = measure_quota_slowdown(fraction)
    return [f"### vgg16_bn forward under a CPU quota of {q['fraction']:g} CPU", "",
            "`planner.models.build_model('vgg16_bn', use_default_weights=False)`, input "
            f"1x3x224x224, torch.set_num_threads(1), median of {q['repeats']} after one warm-up; "
            "the same process first unconfined, then confined with "
            "`device.cpu_quota.confine_to_cpu_fraction` (`python -m bench.quota_probe`): cgroup "
            f"{q['cgroup']}, {q['quota_us']} us of CPU per {q['period_us']} us period.", "",
            "| quota | forward s | ratio |", "|---|---:|---:|",
            f"| none | {q['free_s']:.3f} | 1 |",
            f"| {q['fraction']:g} | {q['confined_s']:.3f} | {q['ratio']:.2f} |"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.netns", description=__doc__.split("\n")[0])
    p.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.5, 1.0, 2.0],
                   help="tbf rates to measure, Mbps")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each transfer")
    p.add_argument("--repeats", type=int, default=3, help="transfers per rate")
    p.add_argument("--quota", type=float, default=0.1, help="CPU fraction for the slowdown figure")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if (problem := common.net_admin_problem()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cleanup_stale()
    load = common.RunLoad()
    command = common.command_line("bench.netns", argv)
    body = goodput_lines(args.rates, args.seconds, args.repeats) + [""] + quota_lines(args.quota)
    body += ["", "### This kernel", "",
             f"- kernel: {platform.release()}",
             f"- netem (delay/loss) available: {netem_available()}"]
    lines = common.header("Shaped links (network namespaces + tbf) and the CPU quota", command, load)
    lines += body + ["", common.notes_line("netns")]
    if args.no_write:
        print("\n".join(lines))
    else:
        common.write("netns", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
