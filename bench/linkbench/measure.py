"""The link bench's measurements: every scheme at each tbf rate, and the whole run.

`measure_rate` builds one `testbed.ShapedLink`, starts `coinfer-cloud serve` in the cloud
namespace and runs `coinfer-device infer` in the device namespace once per scheme (auto
first, writing its live profile); `run_link_bench` does every rate, the optional rate
change (`bench.linkbench.rate_change`), then writes JSON, one PNG per rate
(`bench.linkbench.plot`) and markdown (`bench.linkbench.markdown`).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.linkbench.config import AUTO, SINGLE_END, LinkBenchConfig, cloud_args
from bench.linkbench.markdown import markdown
from bench.linkbench.plot import plot_rate
from bench.linkbench.predict import row_of
from bench.linkbench.processes import Children, run_device_infer
from bench.linkbench.rate_change import follow_rate_change
from testbed import ShapedLink, cleanup_stale


def measure_rate(cfg: LinkBenchConfig, rate_mbps: float, workdir: Path, progress=print) -> dict:
    """Everything at one tbf rate: rows per scheme, the live choice, the summary figures."""
    from cloud.daemon import CloudDaemon
    from planner.profile import load_profile
    children = Children()
    with ShapedLink(rate_mbps) as link:
        cloud = CloudDaemon(cloud_args(cfg), host=link.cloud_addr, prefix=link.exec_prefix(link.cloud_ns))
        try:
            cloud.start()
            profile_path = workdir / f"profile-{cfg.label}-{rate_mbps:g}.json"
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
    # the same by seconds per frame of the whole run (wall / images): under a quota a stall
    # lands wherever the kernel throttles, inside a frame's timing or between frames (device-only
    # at 0.1, 2026-12-06: mean frame latency 3-26 ms over runs, wall / images 22-26 ms)
    cycles = {s: by[s].measured_cycle_s for s in (AUTO, *SINGLE_END)}
    best_cycle = min(SINGLE_END, key=lambda s: cycles[s] or float("inf"))
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
        "best_single_end_per_frame": best_cycle,
        "live_over_best_single_end_per_frame": (cycles[AUTO] / cycles[best_cycle]
                                                if cycles[AUTO] and cycles[best_cycle] else None),
        "median_rel_error": statistics.median(errors) if errors else None,
        "profile": str(profile_path) if profile is not None else None,
    }


def run_link_bench(cfg: LinkBenchConfig, out_dir: Path | None, progress=print) -> dict:
    """All rates (and the rate change); writes JSON, PNGs and markdown under out_dir."""
    cleanup_stale()
    work = Path(tempfile.mkdtemp(prefix="coinfer-bench-link-"))
    result: dict = {"model": cfg.model, "runtime": cfg.runtime, "label": cfg.label, "config": dataclasses.asdict(cfg),
                    "rates": [], "rate_change": None}
    try:
        for rate in cfg.rates_mbps:
            progress(f"{cfg.label} at {rate:g} Mbps")
            r = measure_rate(cfg, rate, work, progress)
            if out_dir is not None and r["profile"]:
                out_dir.mkdir(parents=True, exist_ok=True)
                dst = out_dir / f"{cfg.label}-{rate:g}mbps.profile.json"
                shutil.copy(r["profile"], dst)
                r["profile"] = str(dst)
            result["rates"].append(r)
        if cfg.rate_change:
            progress(f"{cfg.label}: rate change {cfg.rate_change[0]:g} -> {cfg.rate_change[1]:g} Mbps during auto")
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
            r["png"] = str(plot_rate(r, cfg.label, out_dir / f"{cfg.label}-{r['rate_mbps']:g}mbps.png"))
        (out_dir / f"{cfg.label}.json").write_text(json.dumps(result, indent=1))
        (out_dir / f"{cfg.label}.md").write_text("\n".join(markdown(result)) + "\n")
    return result
