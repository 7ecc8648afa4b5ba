"""`make bench-bank`: the shipped bank of fine-tuned tails, measured.

1. Accuracy through a real cloud daemon on loopback: fixed schemes on the first N test
   images, with the bank's tail (unary Infer and one InferStream) and with the unmodified
   tail, beside the unmodified network (device-only) in the same run.
2. Cloud memory: resident set of a daemon with the bank loaded against one without, after
   the same warm-up frames.
3. The bank on disk and its build time (the manifest's per-scheme seconds).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import header, write
from cloud.daemon import REPO, CloudDaemon
from device.client import ClientConfig, CloudClient
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.bank import read_manifest, shipped_bank_dir
from planner.data import load_fashion_mnist
from planner.models import build_model
from planner.scheme import DEVICE_ONLY, Scheme

MODEL = "fmnist-vgg"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def accuracy(runner: DeviceRunner, client: CloudClient, scheme: Scheme, images, labels, stream: bool) -> float:
    if not stream:
        return float(np.mean([runner.run(scheme, img).top1 == y for img, y in zip(images, labels)]))
    reqs = [runner.prepare(scheme, img)[0] for img in images]
    answers = list(client.infer_stream(reqs, timeout_s=600))
    assert [a.request_id for a in answers] == [r.request_id for r in reqs]
    return float(np.mean([a.top1 == y for a, y in zip(answers, labels)]))


def predicted_choices(manifest, profile_path: str, profile_speed: float, losses: list[float],
                      bandwidths: list[float], speeds: list[float]) -> list[str]:
    """Markdown rows: the planner's choice over the bank at each operating point, with its
    predicted latency against the faster single end (the live planner's own search)."""
    from planner.frontier import with_device_speed
    from planner.latency import LatencyModel
    from planner.profile import load_profile
    from planner.requirement import RequirementKind, RequirementSpec
    from planner.search import DBEvaluator, SearchConfig, Space, Strategy, build_candidates, search
    errors = {e.scheme: e.top1_error for e in manifest.schemes}
    profile = load_profile(profile_path)
    rows = ["| loss <= | uplink Mbps | device (cores) | choice | predicted s | faster single end | its s | "
            "best split (any accuracy) | its s | its loss |", "|---:|---:|---:|---|---:|---|---:|---|---:|---:|"]
    for loss in losses:
        for bw in bandwidths:
            for speed in speeds:
                lat = LatencyModel.from_profile(with_device_speed(profile, speed / profile_speed), bw)
                req = RequirementSpec(RequirementKind.MAX_ACCURACY_LOSS, loss).build(lat)
                res = search(lat, build_candidates(lat, Space.DB, errors), req,
                             DBEvaluator(errors, manifest.base_top1_error), SearchConfig(), Strategy.EXHAUSTIVE)
                single, single_s = lat.best_single_end()
                choice = res.scheme or single
                split = min(errors, key=lat.latency_s)
                rows.append(f"| {loss} | {bw:g} | {speed:g} | {choice} | {lat.latency_s(choice):.4f} | {single} | "
                            f"{single_s:.4f} | {split} | {lat.latency_s(split):.4f} | "
                            f"{errors[split] - manifest.base_top1_error:+.3f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="test images per scheme")
    ap.add_argument("--schemes", default="1:8:4,3:16:2", help="fixed schemes to run")
    ap.add_argument("--bank", default=None, help="bank directory (default: the shipped one)")
    ap.add_argument("--profile", default="bench/results/link/fmnist-vgg-0.5mbps.profile.json",
                    help="live profile for the predicted choices (a device at a 0.1 CPU quota)")
    ap.add_argument("--profile-speed", type=float, default=0.1,
                    help="speed of the profiled device as a fraction of one core here")
    args = ap.parse_args(argv)
    bank = Path(args.bank) if args.bank else shipped_bank_dir(MODEL)
    if bank is None:
        raise SystemExit(f"no shipped bank for {MODEL}; build one with `coinfer-plan bank build`")
    manifest = read_manifest(bank)
    schemes = [Scheme.parse(s) for s in args.schemes.split(",")]
    x, y = load_fashion_mnist("test")
    images, labels = x[:args.images].numpy(), y[:args.images].numpy()
    model = build_model(MODEL)

    rows, mem = [], {}
    for name, flags in (("without bank", ["--no-bank"]), ("with bank", ["--bank", str(bank)])):
        cloud = CloudDaemon(["--model", MODEL, "--profile-repeats", "0", "--threads", "1", *flags]).start()
        try:
            with CloudClient(ClientConfig(cloud.address, timeout_s=60)) as client:
                bank_runner = DeviceRunner(TorchHeads(model), MODEL, client)
                plain_runner = DeviceRunner(TorchHeads(model), MODEL, client, use_bank=False)
                for s in schemes:                       # warm-up: the same frames on both daemons
                    for img in images[:50]:
                        bank_runner.run(s, img)
                mem[name] = rss_bytes(cloud.proc.pid)
                if name == "with bank":
                    base = float(np.mean([bank_runner.run(DEVICE_ONLY, img).top1 == t
                                          for img, t in zip(images, labels)]))
                    rows.append(("unmodified network (device-only)", "-", base, base))
                    for s in schemes:
                        t0 = time.perf_counter()
                        unary = accuracy(bank_runner, client, s, images, labels, stream=False)
                        streamed = accuracy(bank_runner, client, s, images, labels, stream=True)
                        plain = accuracy(plain_runner, client, s, images, labels, stream=False)
                        rows.append((str(s), f"{time.perf_counter() - t0:.1f}", unary, streamed, plain))
        finally:
            cloud.stop()

    files = [f for f in bank.iterdir() if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    secs = [e.seconds for e in manifest.schemes]
    growth = mem["with bank"] - mem["without bank"]
    out = header("Scheme bank (fmnist-vgg)", f"python -m bench.bank --images {args.images} --schemes {args.schemes}")
    shown = bank.resolve().relative_to(REPO) if bank.resolve().is_relative_to(REPO) else bank
    out += [f"Bank `{shown}`: {len(manifest.schemes)} schemes, recipe `{manifest.recipe}`, "
            f"base top-1 error {manifest.base_top1_error:.4f} (test split, {manifest.schemes[0].test_size if secs else 0} images).", "",
            f"### Top-1 accuracy on the first {args.images} test images, through a real cloud daemon", "",
            "| scheme | seconds (3 runs) | bank tail, Infer | bank tail, InferStream | unmodified tail | bank - unmodified network |",
            "|---|---:|---:|---:|---:|---:|"]
    base = rows[0][2]
    out.append(f"| {rows[0][0]} | - | {base:.4f} | {base:.4f} | {base:.4f} | 0 |")
    for s, t, unary, streamed, plain in rows[1:]:
        out.append(f"| {s} | {t} | {unary:.4f} | {streamed:.4f} | {plain:.4f} | {unary - base:+.4f} |")
    out += ["", "### Cloud memory (RSS after the same warm-up frames)", "",
            "| daemon | RSS MB |", "|---|---:|",
            f"| `--no-bank` | {mem['without bank'] / 1e6:.1f} |",
            f"| `--bank` ({len(manifest.schemes)} schemes) | {mem['with bank'] / 1e6:.1f} |",
            f"| growth | {growth / 1e6:+.1f} ({mem['with bank'] / mem['without bank']:.3f}x) |", "",
            "### On disk and build time", "",
            f"- {len(files)} files, {size / 1e6:.2f} MB ({size / max(1, len(manifest.schemes)) / 1e3:.1f} kB per scheme)",
            f"- build: {sum(secs) / 60:.1f} min summed over schemes (fine-tune + test), mean {statistics.fmean(secs):.1f} s, "
            f"max {max(secs):.1f} s per scheme" if secs else "- build: no schemes"]
    speeds = [0.01, 0.1, 1.0]
    out += ["", f"### Predicted live choice over the bank (`{args.profile}`, device speed as a fraction of one core)", "",
            "The planner's own search (exhaustive over the bank) on the live profile, its device times "
            "scaled to each speed. `best split` is the fastest bank scheme whatever its accuracy.", ""]
    out += predicted_choices(manifest, args.profile, args.profile_speed, [0.02, 0.05], [0.02, 0.1, 0.5, 2.0, 10.0],
                             speeds)
    write("bank", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
