"""`coinfer-bench link`: the device and the cloud over a real, shaped link, prediction vs measurement.

    coinfer-bench link --model fmnist-vgg --rates 0.05 0.5 1 2 --quota 0.1 --limit 40 \
                       --schemes 1:8:4 3:16:2 --rate-change 0.05:2 --out /tmp/link

As root, for each rate: two network namespaces joined by a veth pair whose device->cloud
direction is shaped by tbf (bench.netns.ShapedLink), `coinfer-cloud serve` in the cloud
namespace, and `coinfer-device infer` in the device namespace under the CPU quota, once per
scheme (the listed ones plus device-only, cloud-only and auto). `auto` runs first and writes
its live profile (`--profile-out`): head times of the quota'd device, tails from the cloud's
server info, the round trip and the zstd ratios it learned.  Each scheme's prediction is
`planner.latency.LatencyModel` on that profile at the bandwidth the device measured; for a
(P, B) or an image ratio the auto run never sent, the ratio is the one that scheme's own
frames showed (what the device learns from its first frame), and the table says so.

Device processes enter only the device namespace's network (`nsenter --net`), not a new
mount namespace: `ip netns exec` remounts /sys, which hides /sys/fs/cgroup and so the CPU
quota.  Every child is stopped and both namespaces removed on success, failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.netns import netns_exec_prefix
from common.codec import packed_bytes

log = logging.getLogger("coinfer-bench")

REPO = Path(__file__).resolve().parents[1]
SINGLE_END = ("device-only", "cloud-only")
AUTO = "auto"
DEVICE_START_S = 180.0       # bound on a device command's start-up (imports, model, head profiling)
PER_IMAGE_S = 120.0          # bound on one image end to end (vgg16_bn at 0.1 CPU is ~4 s)
FOLLOW_WARMUP_FRAMES = 5     # rate change: frames at the first rate before switching
FOLLOW_TIMEOUT_S = 60.0      # rate change: give up following after this long
FOLLOW_AFTER_FRAMES = 3      # rate change: frames kept after the switch was seen


class BenchError(RuntimeError):
    """A device or cloud command of the bench failed; the message has its stderr tail."""


# -- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkBenchConfig:
    model: str = "fmnist-vgg"
    rates_mbps: tuple[float, ...] = (0.5, 1.0, 2.0)     # tbf rates, 10^6 bit/s
    quota: float | None = 0.1                           # device CPU fraction; None: unconfined
    schemes: tuple[str, ...] = ()                       # P:C:B beyond the single ends and auto
    limit: int = 20                                     # images per scheme
    input_size: tuple[int, int] | None = None           # (H, W); None: the model's
    weights: str | None = None                          # state dict for both sides (None: shipped)
    num_classes: int | None = None                      # classifier width (both sides)
    db: str | None = None                               # auto: accuracy database
    recipe: str = "ft0-"                                # auto: runnable DB rows
    dataset_name: str | None = None                     # auto: dataset of the DB rows
    requirement: tuple[str, ...] = ()                   # auto: e.g. ("--max-accuracy-loss", "0.01")
    rate_change: tuple[float, float] | None = None      # (A, B) Mbps
    images: tuple[str, ...] = ()                        # image files (models without a dataset)
    synthetic_images: bool = False                      # images are generated, timing/bytes only
    cloud_profile_repeats: int = 3                      # cloud tail timing repeats at start-up
    cloud_threads: int = 1                              # cloud torch intra-op threads

    def all_schemes(self) -> list[str]:
        out = [AUTO, *SINGLE_END]
        for s in self.schemes:
            if s not in out:
                out.append(s)
        return out


# -- processes ---------------------------------------------------------------------------------
class Children:
    """Child processes of the bench; all are stopped by stop_all() (TERM, then KILL)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self, grace_s: float = 5.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=grace_s)
        self.procs.clear()


def cloud_args(cfg: LinkBenchConfig) -> list[str]:
    # one torch thread: with two OpenMP threads on two shared, busy cores the cloud's start-up
    # tail profile came out up to 100x slower than the tails it then served (0.34 s vs 2 ms)
    args = ["--model", cfg.model, "--profile-repeats", str(cfg.cloud_profile_repeats),
            "--threads", str(cfg.cloud_threads)]
    if cfg.weights:
        args += ["--weights", cfg.weights]
    if cfg.num_classes:
        args += ["--num-classes", str(cfg.num_classes)]
    if cfg.input_size:
        args += ["--input-size", f"{cfg.input_size[0]}x{cfg.input_size[1]}"]
    return args


def device_common(cfg: LinkBenchConfig, cloud: str, scheme: str) -> list[str]:
    argv = ["--cloud", cloud, "--model", cfg.model, "--scheme", scheme, "--json"]
    if cfg.quota:
        argv += ["--cpu-quota", f"{cfg.quota:g}"]
    if cfg.weights:
        argv += ["--weights", cfg.weights]
    if cfg.num_classes:
        argv += ["--num-classes", str(cfg.num_classes)]
    if scheme == AUTO:
        argv += ["--recipe", cfg.recipe, *cfg.requirement]
        if cfg.db:
            argv += ["--db", cfg.db]
        if cfg.dataset_name:
            argv += ["--dataset-name", cfg.dataset_name]
    return argv


def run_device_infer(children: Children, ns: str, cfg: LinkBenchConfig, cloud: str, scheme: str,
                     profile_out: Path | None = None) -> tuple[list[dict], dict]:
    """`coinfer-device infer` in the device namespace: (per-image JSON, summary JSON)."""
    argv = [sys.executable, "-m", "device", "infer", *device_common(cfg, cloud, scheme)]
    if profile_out is not None:
        argv += ["--profile-out", str(profile_out)]
    argv += list(cfg.images[:cfg.limit]) if cfg.images else ["--dataset", "fashion-mnist", "--limit", str(cfg.limit)]
    proc = children.popen([*netns_exec_prefix(ns), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=DEVICE_START_S + PER_IMAGE_S * cfg.limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise BenchError(f"device {scheme}: timed out; stderr: {err.strip()[-400:]}")
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"device {scheme} exited {proc.returncode}: {err.strip()[-600:]}")
    return lines[:-1], lines[-1]


# -- predictions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchemeRow:
    scheme: str                  # as asked (auto: the live choice)
    ran: str                     # the scheme most frames ran with
    images: int
    measured_p50_s: float        # median end to end on the device
    measured_mean_s: float       # mean end to end: what the prediction is compared with
    predicted_s: float | None    # LatencyModel on the live profile at the measured bandwidth
    rel_error: float | None      # |pred - meas| / meas
    wire_bytes_mean: float
    predicted_bytes: int | None
    bytes_source: str            # "live profile" | "this scheme's frames" | "-"
    fallbacks: int
    scheme_counts: dict = field(default_factory=dict)
    head_s_mean: float = 0.0
    encode_s_mean: float = 0.0
    rtt_s_mean: float = 0.0
    tail_s_mean: float = 0.0


def learned_ratio(frames: list[dict], scheme, part, side_per_ch: int, header: int) -> float | None:
    """zstd ratio of a split scheme as the device would learn it from these frames' bytes."""
    packed = packed_bytes(scheme.channels * part.height * part.width, scheme.bits)
    sent = [f["wire_bytes"] for f in frames if f.get("wire_bytes") and not f.get("fallback")]
    if not sent or packed == 0:
        return None
    return max(1e-6, (statistics.fmean(sent) - scheme.channels * side_per_ch - header) / packed)


def predict(profile, scheme_name: str, frames: list[dict], bandwidth_mbps: float,
            image_ratio_learned: bool) -> tuple[float, int, str]:
    """(seconds, bytes, where the byte ratio came from) for one scheme."""
    from planner.latency import LatencyModel
    from planner.profile import CodecProfile
    from planner.scheme import Mode, Scheme
    scheme = Scheme.parse(scheme_name)
    source = "-"
    if scheme.mode is Mode.CLOUD_ONLY:
        source = "live profile"
        sent = [f["wire_bytes"] for f in frames if f.get("wire_bytes") and not f.get("fallback")]
        if not image_ratio_learned and sent:
            profile = dataclasses.replace(profile, cloud_only_upload_bytes=round(statistics.fmean(sent)))
            source = "this scheme's frames"
    elif scheme.is_split:
        source = "live profile"
        if profile.codec_entry(scheme.partition, scheme.bits) is None:
            r = learned_ratio(frames, scheme, profile.partition(scheme.partition),
                              profile.side_bytes_per_channel, profile.header_bytes)
            if r is not None:
                profile = dataclasses.replace(
                    profile, codec=(*profile.codec, CodecProfile(scheme.partition, scheme.bits, r)))
                source = "this scheme's frames"
            else:
                source = "ratio 1 (no frames)"
    lat = LatencyModel.from_profile(profile, bandwidth_mbps)
    return lat.latency_s(scheme), lat.wire_bytes(scheme), source


def row_of(scheme: str, frames: list[dict], summary: dict, profile, bandwidth_mbps: float | None,
           image_ratio_learned: bool) -> SchemeRow:
    ran = summary["scheme"]
    pred = nbytes = None
    source = "-"
    if profile is not None and bandwidth_mbps:
        pred, nbytes, source = predict(profile, ran, [f for f in frames if f["scheme"] == ran], bandwidth_mbps,
                                       image_ratio_learned)
    meas = summary["latency_s"]["mean"]   # a sustained stream's per-frame cost, as the profile measures it
    return SchemeRow(scheme, ran, summary["images"], summary["latency_s"]["p50"], meas, pred,
                     None if pred is None else abs(pred - meas) / meas, summary["wire_bytes_mean"], nbytes,
                     source, summary["fallbacks"], summary["scheme_counts"], summary.get("head_s_mean", 0.0),
                     summary.get("encode_s_mean", 0.0), summary.get("rtt_s_mean", 0.0),
                     summary.get("tail_s_mean", 0.0))


# -- one rate ----------------------------------------------------------------------------------
def measure_rate(cfg: LinkBenchConfig, rate_mbps: float, workdir: Path, progress=print) -> dict:
    """Everything at one tbf rate: rows per scheme, the live choice, the summary figures."""
    from bench.netns import ShapedLink
    from cloud.daemon import CloudDaemon
    from planner.profile import load_profile
    children = Children()
    with ShapedLink(rate_mbps) as link:
        cloud = CloudDaemon(cloud_args(cfg), host=link.cloud_addr, prefix=link.exec_prefix(link.cloud_ns))
        try:
            cloud.start()
            profile_path = workdir / f"profile-{cfg.model}-{rate_mbps:g}.json"
            runs: dict[str, tuple[list[dict], dict]] = {}
            for scheme in cfg.all_schemes():
                t0 = time.perf_counter()
                runs[scheme] = run_device_infer(children, link.device_ns, cfg, cloud.address, scheme,
                                                profile_path if scheme == AUTO else None)
                progress(f"  {rate_mbps:g} Mbps {scheme:>12}: mean {runs[scheme][1]['latency_s']['mean']:.4f} s "
                         f"({time.perf_counter() - t0:.0f} s)")
        finally:
            children.stop_all()
            cloud.stop(timeout_s=15)
        tbf = link.qdisc_stats()
        goodput = link.shape.expected_goodput_mbps
    auto_frames, auto_summary = runs[AUTO]
    bw = auto_summary.get("bandwidth_mbps")
    profile = load_profile(profile_path) if profile_path.is_file() else None
    # the live profile learned an image ratio only if auto sent images (ran cloud-only)
    learned_image = any(f["scheme"] == "cloud-only" and not f.get("fallback") for f in auto_frames)
    rows = [row_of(s, *runs[s], profile, bw, learned_image) for s in cfg.all_schemes()]
    by = {r.scheme: r for r in rows}
    best_single = min(SINGLE_END, key=lambda s: by[s].measured_mean_s)
    errors = [r.rel_error for r in rows if r.scheme != AUTO and r.rel_error is not None]
    planned = [f.get("planned") for f in auto_frames]
    return {
        "rate_mbps": rate_mbps, "expected_goodput_mbps": goodput, "bandwidth_mbps": bw,
        "bandwidth_over_goodput": bw / goodput if bw else None,
        "link_rtt_s": auto_summary.get("link_rtt_s"), "tbf": tbf,
        "rows": [dataclasses.asdict(r) for r in rows],
        "live_choice": by[AUTO].ran, "live_planned_last": planned[-1] if planned else None,
        "best_single_end": best_single,
        "live_over_best_single_end": by[AUTO].measured_mean_s / by[best_single].measured_mean_s,
        "median_rel_error": statistics.median(errors) if errors else None,
        "profile": str(profile_path) if profile is not None else None,
    }


# -- rate change -------------------------------------------------------------------------------
def _frame_index(request_id: str) -> tuple[str, int]:
    prefix, _, n = request_id.rpartition("-")
    return prefix, int(n)


def check_frames(frames: list[dict]) -> dict:
    """No frame lost or duplicated: request ids unique, one id prefix, numbers consecutive."""
    ids = [f["request_id"] for f in frames]
    parsed = [_frame_index(i) for i in ids]
    nums = [n for _, n in parsed]
    steps = [b - a for a, b in zip(nums, nums[1:])]
    return {"frames": len(frames), "unique_ids": len(set(ids)) == len(ids),
            "one_session": len({p for p, _ in parsed}) <= 1,
            "consecutive": all(s == 1 for s in steps), "id_steps": sorted(set(steps))}


def follow_rate_change(cfg: LinkBenchConfig, rate_a: float, rate_b: float, progress=print,
                       timeout_s: float = FOLLOW_TIMEOUT_S, extra_device_args: tuple[str, ...] = ()) -> dict:
    """`coinfer-device run --scheme auto` at rate A; switch to B with tc; how long until the
    planned scheme changes (and until the bandwidth estimate is within 25% of B's goodput)."""
    from bench.netns import ShapedLink, TbfShape
    from cloud.daemon import CloudDaemon
    children = Children()
    frames: list[dict] = []
    summary: dict | None = None
    switch_at: tuple[int, float] | None = None
    changed_at = estimate_at = None
    stderr_tail: list[str] = []
    with ShapedLink(rate_a) as link:
        cloud = CloudDaemon(cloud_args(cfg), host=link.cloud_addr, prefix=link.exec_prefix(link.cloud_ns))
        try:
            cloud.start()
            argv = [sys.executable, "-m", "device", "run", *device_common(cfg, cloud.address, AUTO),
                    *extra_device_args]
            feed = None
            if cfg.images:
                argv += ["--stdin"]
            else:
                argv += ["--dataset", "fashion-mnist", "--loop"]
            proc = children.popen([*netns_exec_prefix(link.device_ns), *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, stdin=subprocess.PIPE if cfg.images else None, text=True)
            threading.Thread(target=lambda: stderr_tail.extend(proc.stderr.read().splitlines()[-20:]),
                             daemon=True).start()
            if cfg.images:
                def feed_paths(n_max: int = 10_000) -> None:
                    try:
                        for i in range(n_max):
                            if proc.poll() is not None:
                                return
                            proc.stdin.write(cfg.images[i % len(cfg.images)] + "\n")
                            proc.stdin.flush()
                            time.sleep(0.05)
                    except (BrokenPipeError, OSError, ValueError):
                        return
                feed = threading.Thread(target=feed_paths, daemon=True)
                feed.start()
            goodput_b = TbfShape(rate_b).expected_goodput_mbps
            start = time.monotonic()
            hard_deadline = start + DEVICE_START_S + timeout_s * 2
            for line in proc.stdout:                          # bounded by the deadlines below
                if not line.startswith("{"):
                    continue
                rec = json.loads(line)
                if "request_id" not in rec:
                    summary = rec
                    break
                rec["t_s"] = time.monotonic() - start
                frames.append(rec)
                if switch_at is None and len(frames) >= FOLLOW_WARMUP_FRAMES:
                    link.set_rate(rate_b)
                    switch_at = (len(frames), time.monotonic() - start)
                    before = rec["planned"]
                    progress(f"  rate {rate_a:g} -> {rate_b:g} Mbps after frame {len(frames)} (planned {before})")
                elif switch_at is not None:
                    k, t = switch_at
                    bw = rec.get("bandwidth_mbps")
                    if estimate_at is None and bw and abs(bw - goodput_b) <= 0.25 * goodput_b:
                        estimate_at = (len(frames) - k, rec["t_s"] - t)
                    if changed_at is None and rec["planned"] != before:
                        changed_at = (len(frames) - k, rec["t_s"] - t, rec["planned"])
                    done = changed_at is not None and estimate_at is not None
                    if (done and len(frames) - k - changed_at[0] >= FOLLOW_AFTER_FRAMES) \
                            or rec["t_s"] - t > timeout_s or time.monotonic() > hard_deadline:
                        proc.send_signal(signal.SIGTERM)
            if summary is None:
                try:
                    rest, _ = proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rest, _ = proc.communicate()
                for line in (rest or "").splitlines():
                    if line.startswith("{"):
                        rec = json.loads(line)
                        if "request_id" in rec:
                            frames.append(rec)
                        else:
                            summary = rec
            proc.wait(timeout=30)
        finally:
            children.stop_all()
            cloud.stop(timeout_s=15)
    if switch_at is None:
        raise BenchError(f"rate change: the device stopped after {len(frames)} frames: "
                         + " | ".join(stderr_tail[-3:]))
    before = frames[switch_at[0] - 1]["planned"]
    return {
        "rate_a_mbps": rate_a, "rate_b_mbps": rate_b, "switch_after_frame": switch_at[0],
        "planned_before": before,
        "planned_after": changed_at[2] if changed_at else frames[-1]["planned"],
        "followed": changed_at is not None,
        "frames_to_follow": changed_at[0] if changed_at else None,
        "seconds_to_follow": changed_at[1] if changed_at else None,
        "estimate_frames": estimate_at[0] if estimate_at else None,
        "estimate_seconds": estimate_at[1] if estimate_at else None,
        "bandwidth_before": frames[switch_at[0] - 1].get("bandwidth_mbps"),
        "bandwidth_last": frames[-1].get("bandwidth_mbps"),
        "expected_goodput_b_mbps": TbfShape(rate_b).expected_goodput_mbps,
        "frame_check": check_frames(frames), "summary": summary,
        "frames": [{k: f.get(k) for k in ("request_id", "scheme", "planned", "bandwidth_mbps", "total_s",
                                          "replanned", "fallback", "t_s")} for f in frames],
    }


# -- output ------------------------------------------------------------------------------------
def table_lines(rate: dict) -> list[str]:
    bw, rtt = rate["bandwidth_mbps"], rate["link_rtt_s"]
    lines = [f"tc rate {rate['rate_mbps']:g} Mbps (goodput {rate['expected_goodput_mbps']:.4g}); device estimate "
             f"{'n/a' if bw is None else f'{bw:.4g}'} Mbps, rtt "
             f"{'n/a' if rtt is None else f'{rtt * 1e3:.2f}'} ms", "",
             "| scheme | ran | images | measured mean s | p50 s | predicted s | abs(pred-mean)/mean | "
             "bytes/img | predicted bytes | bytes from | fallbacks |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rate["rows"]:
        pred = "-" if r["predicted_s"] is None else f"{r['predicted_s']:.4f}"
        err = "-" if r["rel_error"] is None else f"{r['rel_error']:.1%}"
        name = f"**auto** -> {r['ran']}" if r["scheme"] == AUTO else r["scheme"]
        counts = "" if len(r["scheme_counts"]) <= 1 else " " + json.dumps(r["scheme_counts"]).replace("|", "/")
        lines.append(f"| {name} | {r['ran']}{counts} | {r['images']} | {r['measured_mean_s']:.4f} | "
                     f"{r['measured_p50_s']:.4f} | {pred} | {err} | {r['wire_bytes_mean']:.0f} | "
                     f"{'-' if r['predicted_bytes'] is None else r['predicted_bytes']} | {r['bytes_source']} | "
                     f"{r['fallbacks']} |")
    med = rate["median_rel_error"]
    lines += ["", f"median abs(pred-meas)/meas over the non-auto schemes: {'n/a' if med is None else f'{med:.1%}'}; "
              f"live choice {rate['live_choice']} / best single-end ({rate['best_single_end']}): "
              f"{rate['live_over_best_single_end']:.3f}"]
    return lines


def plot_rate(rate: dict, model: str, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = rate["rows"]
    names = [f"auto\n({r['ran']})" if r["scheme"] == AUTO else r["scheme"] for r in rows]
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    ax.scatter(x, [r["measured_mean_s"] for r in rows], marker="o", s=60, color="tab:blue",
               label="measured (mean)", zorder=3)
    ax.scatter([i for i, r in zip(x, rows) if r["predicted_s"] is not None],
               [r["predicted_s"] for r in rows if r["predicted_s"] is not None], marker="x", s=70,
               color="tab:orange", label="predicted (live profile)", zorder=4)
    by = {r["scheme"]: r for r in rows}
    for s, color in (("device-only", "tab:green"), ("cloud-only", "tab:red")):
        ax.axhline(by[s]["measured_mean_s"], color=color, ls="--", lw=1, label=f"{s} measured")
    a = next(i for i, r in enumerate(rows) if r["scheme"] == AUTO)
    ax.scatter([a], [rows[a]["measured_mean_s"]], marker="*", s=320, facecolor="none", edgecolor="black",
               lw=1.5, label=f"live choice: {rows[a]['ran']}", zorder=5)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency per image, s (log)")
    bw = rate["bandwidth_mbps"]
    ax.set_title(f"{model}: tc {rate['rate_mbps']:g} Mbps, device estimate "
                 f"{'n/a' if bw is None else f'{bw:.3g}'} Mbps", fontsize=10)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


# -- the driver --------------------------------------------------------------------------------
def run_link_bench(cfg: LinkBenchConfig, out_dir: Path | None, progress=print) -> dict:
    """All rates (and the rate change); writes JSON, PNGs and markdown under out_dir."""
    from bench.netns import cleanup_stale
    cleanup_stale()
    work = Path(tempfile.mkdtemp(prefix="coinfer-bench-link-"))
    result: dict = {"model": cfg.model, "config": dataclasses.asdict(cfg), "rates": [], "rate_change": None}
    try:
        for rate in cfg.rates_mbps:
            progress(f"{cfg.model} at {rate:g} Mbps")
            r = measure_rate(cfg, rate, work, progress)
            if out_dir is not None and r["profile"]:
                out_dir.mkdir(parents=True, exist_ok=True)
                dst = out_dir / f"{cfg.model}-{rate:g}mbps.profile.json"
                shutil.copy(r["profile"], dst)
                r["profile"] = str(dst)
            result["rates"].append(r)
        if cfg.rate_change:
            progress(f"{cfg.model}: rate change {cfg.rate_change[0]:g} -> {cfg.rate_change[1]:g} Mbps during auto")
            result["rate_change"] = follow_rate_change(cfg, *cfg.rate_change, progress=progress) | {
                "requirement": list(cfg.requirement)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    errs = [r["median_rel_error"] for r in result["rates"] if r["median_rel_error"] is not None]
    result["median_rel_error_all_rates"] = statistics.median(
        [row["rel_error"] for r in result["rates"] for row in r["rows"]
         if row["scheme"] != AUTO and row["rel_error"] is not None]) if errs else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for r in result["rates"]:
            r["png"] = str(plot_rate(r, cfg.model, out_dir / f"{cfg.model}-{r['rate_mbps']:g}mbps.png"))
        (out_dir / f"{cfg.model}.json").write_text(json.dumps(result, indent=1))
        (out_dir / f"{cfg.model}.md").write_text("\n".join(markdown(result)) + "\n")
    return result


def rate_change_lines(rc: dict) -> list[str]:
    chk = rc["frame_check"]
    follow = (f"planned scheme changed {rc['planned_before']} -> {rc['planned_after']} after "
              f"{rc['frames_to_follow']} frames / {rc['seconds_to_follow']:.2f} s" if rc["followed"]
              else f"planned scheme stayed {rc['planned_before']} (not followed within {FOLLOW_TIMEOUT_S:g} s)")
    est = ("n/a" if rc["estimate_seconds"] is None else
           f"{rc['estimate_frames']} frames / {rc['estimate_seconds']:.2f} s")
    req = " ".join(rc.get("requirement") or []) or "the default requirement"
    return [f"auto under {req}, rate {rc['rate_a_mbps']:g} -> {rc['rate_b_mbps']:g} Mbps (tc change after frame "
            f"{rc['switch_after_frame']}): {follow}; bandwidth estimate within 25% of the new goodput "
            f"({rc['expected_goodput_b_mbps']:.3g} Mbps) after {est}; frames {chk['frames']}, request ids unique "
            f"{chk['unique_ids']}, consecutive {chk['consecutive']}"]


def markdown(result: dict) -> list[str]:
    cfg = result["config"]
    lines = [f"### {result['model']} (device CPU quota {cfg['quota'] or 'none'}, {cfg['limit']} images per scheme"
             + (", synthetic images: timing and bytes only" if cfg["synthetic_images"] else "") + ")", ""]
    for r in result["rates"]:
        lines += [f"#### {r['rate_mbps']:g} Mbps", "", *table_lines(r), ""]
        if r.get("png"):
            lines += [f"![{result['model']} at {r['rate_mbps']:g} Mbps]({Path(r['png']).name})", ""]
    if result["rate_change"]:
        lines += ["#### Rate change during auto", "", *rate_change_lines(result["rate_change"]), ""]
    return lines


# -- CLI -----------------------------------------------------------------------------------------
def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.replace(",", " ").split())


def _hw(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def _rate_change(text: str) -> tuple[float, float]:
    a, sep, b = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected A:B (Mbps), got {text!r}")
    return float(a), float(b)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coinfer-bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("link", help="schemes over a tbf-shaped veth between namespaces (root)")
    p.add_argument("--model", default="fmnist-vgg")
    p.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="tbf rates, Mbps")
    p.add_argument("--quota", type=float, default=0.1, help="device CPU fraction (0: no quota)")
    p.add_argument("--schemes", nargs="*", default=[], help="P:C:B schemes; device-only, cloud-only, auto always run")
    p.add_argument("--limit", type=int, default=20, help="images per scheme")
    p.add_argument("--input-size", type=_hw, metavar="HxW", help="input size (cloud; default the model's)")
    p.add_argument("--weights", help="state dict for both sides (default: the shipped one)")
    p.add_argument("--num-classes", type=int, help="classifier width on both sides")
    p.add_argument("--images", nargs="+", metavar="IMAGE",
                   help="image files (default: Fashion-MNIST for fmnist-vgg, else generated timing images)")
    p.add_argument("--db", help="auto: accuracy database")
    p.add_argument("--recipe", default="ft0-", help="auto: runnable DB rows (recipe prefix)")
    p.add_argument("--dataset-name", help="auto: dataset of the DB rows")
    req = p.add_mutually_exclusive_group()
    req.add_argument("--max-accuracy-loss", type=float, metavar="A")
    req.add_argument("--latency-ratio", type=float, metavar="R")
    req.add_argument("--max-latency-s", type=float, metavar="S")
    p.add_argument("--rate-change", type=_rate_change, metavar="A:B",
                   help="auto run at A Mbps switched to B with tc: frames/seconds until the plan follows")
    p.add_argument("--out", type=Path, help="directory for JSON, PNG per rate and markdown")
    p.add_argument("--json", action="store_true", help="last line of stdout: the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace, work: Path) -> LinkBenchConfig:
    from planner.models import get_spec
    requirement: tuple[str, ...] = ()
    for flag in ("max_accuracy_loss", "latency_ratio", "max_latency_s"):
        if getattr(args, flag) is not None:
            requirement = (f"--{flag.replace('_', '-')}", f"{getattr(args, flag):g}")
    spec = get_spec(args.model)
    images, synthetic = tuple(args.images or ()), False
    if not images and spec.dataset != "fashion-mnist":
        hw = args.input_size or spec.input_hw
        images, synthetic = tuple(synthetic_images(work / "images", args.limit, hw, spec.in_channels)), True
    return LinkBenchConfig(
        model=args.model, rates_mbps=tuple(args.rates), quota=args.quota or None, schemes=tuple(args.schemes),
        limit=args.limit, input_size=args.input_size, weights=args.weights, num_classes=args.num_classes,
        db=args.db, recipe=args.recipe, dataset_name=args.dataset_name, requirement=requirement,
        rate_change=args.rate_change, images=images, synthetic_images=synthetic)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from bench.netns import LinkUnavailable, require_net_admin
    try:
        require_net_admin()
        if args.quota:
            from device.cpu_quota import QuotaUnavailable, require_cpu_quota
            try:
                require_cpu_quota()
            except QuotaUnavailable as e:
                raise LinkUnavailable(f"--quota: {e}") from e
        if shutil.which("nsenter") is None:
            raise LinkUnavailable("`nsenter` not found: install util-linux")
    except LinkUnavailable as e:
        print(f"coinfer-bench: {e}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="coinfer-bench-images-"))
    try:
        cfg = config_from_args(args, work)
        progress = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
        result = run_link_bench(cfg, args.out, progress)
    except BenchError as e:
        print(f"coinfer-bench: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
