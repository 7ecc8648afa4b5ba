"""`make bench-stream`: pipelined frames and the throughput objective, on the seed and on shaped links.

    python -m bench.stream                    # as root; both models (~15 min here)
    python -m bench.stream --only fmnist-vgg --frames-scale 0.5

1. The seed scenario (no root): `coinfer-plan search --objective latency` and `throughput`
   (4 frames in flight) over the seed's accuracy files at several bandwidths, exhaustive, so
   the settings where the two objectives pick different schemes are shown with both views of
   each pick.
2. Each case of `CASES` on a real shaped link (tbf in a network namespace, device under a CPU
   quota): the case's scheme at pipeline depth 1 and at depth 4, the same frames; the stages
   as measured in the depth-4 run (device head + encode wall seconds, the wire bytes at the
   tbf's goodput, the cloud's decode + tail), 1 / slowest stage against the frames per second,
   and the throughput predicted by the latency model on the live profile.
3. On the same link, `--scheme auto` with `--objective latency` (depth 1, one frame at a time)
   and with `--objective throughput` (depth 4), the schemes each picked and both single ends
   at depth 4: does the throughput pick run the most frames per second of the schemes measured?
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench import common
from bench.link import SEED_DATASET, SEED_DIR, SEED_FILES, seed_db
from bench.linkbench.config import AUTO, SINGLE_END, BenchError, LinkBenchConfig, cloud_args
from bench.linkbench.images import synthetic_images
from bench.linkbench.predict import predict
from bench.linkbench.processes import REPO, Children, run_device_infer

OUT_DIR = common.RESULTS / "stream"  # live profiles of the auto runs, and the run's JSON
DEPTH = 4                           # frames in flight of the pipelined runs
SEED_BANDWIDTHS = (0.5, 1.0, 2.0)   # Mbps of the seed comparison
AUTO_DEPTH = {"latency": 1, "throughput": DEPTH}   # frames in flight of each objective's auto run
SEED_REQUIREMENT = ("--accuracy-loss", "0.01")


@dataclass(frozen=True)
class StreamCase:
    model: str
    scheme: str                          # the pipelined scheme (depth 1 vs depth 4)
    rate_mbps: float                     # tbf rate
    frames: int                          # frames per run
    requirement: tuple[str, ...] = ()    # auto's requirement
    num_classes: int | None = None
    input_hw: tuple[int, int] | None = None
    quota: float | None = None           # device CPU share; None: --quota


# fmnist-vgg runs on a whole core: under a 0.1 quota its device stage (CPU / quota, ~18 ms for
# 1:8:4) is within ~1.25x of a frame's whole depth-1 time at any rate where the link is the
# slowest stage, so no depth could reach 1.5x there (bench/results/stream.md, 2026-12-06: 1.12x
# at 0.25 Mbps).  On a whole core the device takes ~2 ms a frame and 1.5 Mbps puts the link
# (~4.5 ms) first.
CASES = (
    StreamCase("vgg16_bn", "1:4:6", 0.5, 20, ("--max-accuracy-loss", "0.01"), 196, (224, 224)),
    # where the objectives disagree: on the live profiles of three runs (2026-12-06) at 1.5 Mbps,
    # latency -> cloud-only or 1:4:6 (1.25-1.33 s a frame; 0:4:5 1.37-1.55 s) and throughput ->
    # 0:4:5 (1.47-1.62 frames/s at depth 4; cloud-only 1.24).  At 2 Mbps cloud-only and 0:4:5 were
    # within a few % in latency and the latency run alternated between them (10 frames each).
    StreamCase("vgg16_bn", "0:4:5", 1.5, 20, ("--max-accuracy-loss", "0.01"), 196, (224, 224)),
    StreamCase("fmnist-vgg", "1:8:4", 1.5, 300, ("--max-accuracy-loss", "0.02"), quota=1.0),
)


def progress(message: str) -> None:
    print(message, flush=True)


# -- 1. the seed scenario -------------------------------------------------------------------
def seed_search(bandwidth: float, objective: str) -> dict:
    argv = [sys.executable, "-m", "planner", "search", "--profile", str(SEED_DIR / "vgg16_bn_stanford_cars.profile.json"),
            *[x for f in SEED_FILES for x in ("--db", str(SEED_DIR / f))], "--bandwidth-mbps", f"{bandwidth:g}",
            "--space", "db", *SEED_REQUIREMENT, "--objective", objective, "--pipeline-depth", str(DEPTH),
            "--strategy", "exhaustive", "--json"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"coinfer-plan search exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return json.loads(lines[-1])


def seed_section() -> list[str]:
    from planner.latency import Cost, LatencyModel
    from planner.profile import load_profile
    from planner.scheme import Scheme
    profile = load_profile(SEED_DIR / "vgg16_bn_stanford_cars.profile.json")
    lines = ["### Seed scenario: latency vs throughput objective", "",
             f"`coinfer-plan search --space db {' '.join(SEED_REQUIREMENT)} --strategy exhaustive "
             f"--pipeline-depth {DEPTH} --objective latency|throughput` over the seed's files.", "",
             "| Mbps | objective | scheme | latency (s) | period at depth 4 (s) | fps at depth 4 | picks differ |",
             "|---:|---|---|---:|---:|---:|---|"]
    for bw in SEED_BANDWIDTHS:
        picks = {obj: seed_search(bw, obj)["scheme"] for obj in ("latency", "throughput")}
        lat = LatencyModel.from_profile(profile, bw)
        thr = LatencyModel.from_profile(profile, bw, cost=Cost.THROUGHPUT, depth=DEPTH)
        for obj, name in picks.items():
            s = Scheme.parse(name)
            lines.append(f"| {bw:g} | {obj} | {name} | {lat.latency_s(s):.3f} | {thr.cost_s(s):.3f} | "
                         f"{1 / thr.cost_s(s):.2f} | {'yes' if len(set(picks.values())) > 1 else 'no'} |")
    return lines


# -- 2 and 3. a shaped link ------------------------------------------------------------------
def case_config(case: StreamCase, args: argparse.Namespace, work: Path) -> LinkBenchConfig:
    frames = max(4, round(case.frames * args.frames_scale))
    quota = case.quota if case.quota is not None else args.quota or None
    cfg = LinkBenchConfig(model=case.model, rates_mbps=(case.rate_mbps,), quota=quota,
                          limit=frames, num_classes=case.num_classes, requirement=case.requirement)
    if case.model == "fmnist-vgg":
        return cfg
    images = synthetic_images(work / f"images-{case.model}", frames, case.input_hw or (224, 224), 3)
    return replace(cfg, db=str(seed_db(work / "seed.sqlite")), recipe="seed-import", dataset_name=SEED_DATASET,
                   images=tuple(images), synthetic_images=True, input_size=case.input_hw)


def accuracy_losses(case: StreamCase, cfg: LinkBenchConfig) -> dict[str, float]:
    """Accuracy loss of every split scheme auto plans over: the seed rows (vgg16_bn) or the
    cloud's shipped bank (fmnist-vgg); the single ends lose nothing."""
    from device.live_planner import runnable_errors
    from planner.bank import read_manifest, shipped_bank_dir
    if cfg.db:
        errors, base = runnable_errors(cfg.db, case.model, cfg.dataset_name, cfg.recipe)
    else:
        m = read_manifest(shipped_bank_dir(case.model))
        errors, base = {e.scheme: e.top1_error for e in m.schemes}, m.base_top1_error
    return {str(k): v - base for k, v in errors.items()} | {name: 0.0 for name in SINGLE_END}


def max_loss(case: StreamCase) -> float:
    """The bound of the case's `--max-accuracy-loss` requirement (the only kind CASES use)."""
    return float(case.requirement[case.requirement.index("--max-accuracy-loss") + 1])


def measured_stages(summary: dict, link_bytes: float, rate_mbps: float, quota: float | None) -> dict:
    """A run's stages as measured: device head + encode (wall), the device process's CPU per
    frame over its quota share (no stream cycles faster), a frame's bytes through the tbf
    (headers, acknowledgements and framing included) at its rate, the cloud's decode + tail."""
    return {"device": summary["head_s_mean"] + summary["encode_s_mean"],
            "device CPU / quota": summary["cpu_s_per_frame"] / (quota or 1.0),
            "uplink": link_bytes * 8 / (rate_mbps * 1e6),
            "cloud": summary["decode_s_mean"] + summary["tail_s_mean"]}


def run_case(case: StreamCase, cfg: LinkBenchConfig, work: Path, out_dir: Path | None) -> dict:
    from cloud.daemon import CloudDaemon
    from planner.latency import Cost, LatencyModel
    from planner.profile import load_profile
    from planner.scheme import Scheme
    from testbed import ShapedLink, cleanup_stale
    cleanup_stale()
    children = Children()
    runs: dict[str, tuple[list[dict], dict]] = {}

    def run(key: str, scheme: str, depth: int, objective: str = "latency", profile: Path | None = None,
            limit: int | None = None) -> dict:
        t0 = time.perf_counter()
        c = replace(cfg, pipeline_depth=depth, objective=objective, limit=limit or cfg.limit)
        before = link.qdisc_stats()
        runs[key] = run_device_infer(children, link.device_ns, c, cloud.address, scheme, profile)
        after = link.qdisc_stats()
        s = runs[key][1]
        s["tbf_bytes_per_frame"] = (after["bytes"] - before["bytes"]) / s["images"]
        s["tbf_packets_per_frame"] = (after["packets"] - before["packets"]) / s["images"]
        progress(f"  {key:>24}: ran {s['scheme']}, {s['throughput_fps']:.3f} frames/s, mean latency "
                 f"{s['latency_s']['mean']:.3f} s, {s['wire_bytes_mean']:.0f} B/frame, tbf "
                 f"{s['tbf_bytes_per_frame']:.0f} B and {s['tbf_packets_per_frame']:.2f} packets per frame "
                 f"({time.perf_counter() - t0:.0f} s)")
        return s

    with ShapedLink(case.rate_mbps) as link:
        cloud = CloudDaemon(cloud_args(cfg), host=link.cloud_addr, prefix=link.exec_prefix(link.cloud_ns))
        try:
            cloud.start()
            profiles = {obj: work / f"{cfg.label}-{case.rate_mbps:g}mbps-{obj}.profile.json"
                        for obj in ("latency", "throughput")}
            # each objective as its device would run: latency one frame at a time (frames in flight
            # only add queueing to a frame's latency), throughput with DEPTH frames in flight
            autos = {obj: run(f"auto {obj} depth {AUTO_DEPTH[obj]}", AUTO, AUTO_DEPTH[obj], obj, profiles[obj])
                     for obj in profiles}
            # one frame alone: the bytes every run puts on the link besides its frames (connection,
            # GetServerInfo), taken off the runs' tbf counts for the frames' own bytes on the link
            one_frame = run(f"{case.scheme} 1 frame", case.scheme, 1, limit=1)
            run(f"{case.scheme} depth 1", case.scheme, 1)
            run(f"{case.scheme} depth {DEPTH}", case.scheme, DEPTH)
            for name in [*(a["scheme"] for a in autos.values()), *SINGLE_END]:
                if f"{name} depth {DEPTH}" not in runs:
                    run(f"{name} depth {DEPTH}", name, DEPTH)
        finally:
            children.stop_all()
            cloud.stop(timeout_s=15)
        goodput = link.shape.expected_goodput_mbps
    one, four = runs[f"{case.scheme} depth 1"][1], runs[f"{case.scheme} depth {DEPTH}"][1]
    fixed_bytes = one_frame["tbf_bytes_per_frame"] - (one["tbf_bytes_per_frame"] * one["images"] - one_frame[
        "tbf_bytes_per_frame"]) / (one["images"] - 1)      # the 1-frame run's bytes less one frame's
    link_bytes = four["tbf_bytes_per_frame"] - fixed_bytes / four["images"]
    stages = measured_stages(four, link_bytes, case.rate_mbps, cfg.quota)
    slowest = max(stages, key=stages.get)
    thr_summary = runs[f"auto throughput depth {DEPTH}"][1]
    profile = load_profile(profiles["throughput"])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for obj, path in profiles.items():
            shutil.copy(path, out_dir / path.name)
    bw = thr_summary.get("bandwidth_mbps") or goodput
    measured = {}
    lat = LatencyModel.from_profile(profile, bw, cost=Cost.THROUGHPUT, depth=DEPTH)
    for key, (frames, s) in runs.items():
        if key.startswith("auto") or not key.endswith(f"depth {DEPTH}"):
            continue
        pred, _, source = predict(profile, s["scheme"], [f for f in frames if f["scheme"] == s["scheme"]], bw,
                                  image_ratio_learned=False, cost=Cost.THROUGHPUT, depth=DEPTH)
        stages_pred = dataclasses.asdict(lat.stages(Scheme.parse(s["scheme"])))
        measured[s["scheme"]] = {"fps": s["throughput_fps"], "predicted_fps": 1 / pred, "bytes_source": source,
                                 "predicted_stages_s": stages_pred, "cpu_s_per_frame": s["cpu_s_per_frame"],
                                 "head_s_mean": s["head_s_mean"], "encode_s_mean": s["encode_s_mean"],
                                 "tail_s_mean": s["tail_s_mean"], "link_bytes_per_frame": s["tbf_bytes_per_frame"],
                                 "latency_mean_s": s["latency_s"]["mean"], "fallbacks": s["fallbacks"]}
    from planner.search.problem import LOSS_TOL
    losses = accuracy_losses(case, cfg)
    for name, m in measured.items():
        m["accuracy_loss"] = losses.get(name)
        m["meets_requirement"] = m["accuracy_loss"] is not None and m["accuracy_loss"] <= max_loss(case) + LOSS_TOL
    best = max((k for k in measured if measured[k]["meets_requirement"]), key=lambda k: measured[k]["fps"])
    return {
        "model": case.model, "scheme": case.scheme, "rate_mbps": case.rate_mbps, "goodput_mbps": goodput,
        "frames": cfg.limit, "quota": cfg.quota, "bandwidth_mbps": bw,
        "wire_bytes": four["wire_bytes_mean"], "fps_depth1": one["throughput_fps"], "fps_depth4": four["throughput_fps"],
        "speedup": four["throughput_fps"] / one["throughput_fps"],
        "latency_depth1_s": one["latency_s"]["mean"], "latency_depth4_s": four["latency_s"]["mean"],
        "stages_s": stages, "link_bytes_per_frame": link_bytes, "run_fixed_link_bytes": fixed_bytes, "slowest": slowest, "bound_fps": 1 / stages[slowest],
        "fps_over_bound": four["throughput_fps"] * stages[slowest],
        "auto": {obj: {"scheme": a["scheme"], "fps": a["throughput_fps"], "latency_mean_s": a["latency_s"]["mean"],
                       "scheme_counts": a["scheme_counts"]} for obj, a in autos.items()},
        "measured": measured, "best_measured": best, "requirement": list(case.requirement),
    }


def case_key(case: StreamCase) -> tuple[str, str, float]:
    return (case.model, case.scheme, case.rate_mbps)


def previous_results() -> dict[tuple[str, str, float], dict]:
    """The cases of the last written stream.json, by case_key (none when absent or unreadable)."""
    try:
        return {(r["model"], r["scheme"], r["rate_mbps"]): r
                for r in json.loads((OUT_DIR / "stream.json").read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def case_lines(r: dict) -> list[str]:
    st = r["stages_s"]
    run = r.get("run") or {}
    lines = [f"### {r['model']} {r['scheme']} at {r['rate_mbps']:g} Mbps (tbf goodput {r['goodput_mbps']:.3f} Mbps), "
             f"device quota {r['quota']:g}, {r['frames']} frames per run", "",
             *([f"Run {run['date']}: `{run['command']}`.", ""] if run else []),
             "| depth | frames/s | mean frame latency (s) |", "|---:|---:|---:|",
             f"| 1 | {r['fps_depth1']:.3f} | {r['latency_depth1_s']:.3f} |",
             f"| {DEPTH} | {r['fps_depth4']:.3f} | {r['latency_depth4_s']:.3f} |", "",
             f"Depth {DEPTH} / depth 1: **{r['speedup']:.2f}x** frames per second (target >= 1.5x). "
             f"Stages measured in the depth-{DEPTH} run: device {st['device']:.3f} s, device CPU / quota "
             f"{st['device CPU / quota']:.3f} s, uplink {st['uplink']:.3f} s, "
             f"cloud {st['cloud']:.3f} s (the uplink: {r['link_bytes_per_frame']:.0f} B per frame through the tbf, "
             f"{r['wire_bytes']:.0f} B of them the request's); slowest: {r['slowest']}, 1 / slowest = {r['bound_fps']:.3f} frames/s; "
             f"measured / that bound: **{r['fps_over_bound']:.3f}** (target within 10%).", "",
             "Objectives: " + "; ".join(
                 f"`--objective {obj}` at depth {AUTO_DEPTH[obj]} ran {a['scheme']} ({a['fps']:.3f} frames/s, "
                 f"mean latency {a['latency_mean_s']:.3f} s)" for obj, a in r["auto"].items())
             + (" (the two differ)" if r["auto"]["latency"]["scheme"] != r["auto"]["throughput"]["scheme"]
                else " (the two agree here)") + ".", "",
             f"| scheme at depth {DEPTH} | accuracy loss | measured frames/s | predicted frames/s | pred / meas | "
             "mean latency (s) | fallbacks |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in sorted(r["measured"].items(), key=lambda kv: -kv[1]["fps"]):
        loss = "n/a" if m["accuracy_loss"] is None else f"{m['accuracy_loss']:.4f}" + (
            "" if m["meets_requirement"] else " (over)")
        lines.append(f"| {name}{' (best)' if name == r['best_measured'] else ''} | {loss} | {m['fps']:.3f} | "
                     f"{m['predicted_fps']:.3f} | {m['predicted_fps'] / m['fps']:.3f} | {m['latency_mean_s']:.3f} | "
                     f"{m['fallbacks']} |")
    thr = r["auto"]["throughput"]["scheme"]
    lines += ["", f"The throughput objective's pick {thr} "
              + ("is" if thr == r["best_measured"] else "is not") + " the best measured scheme meeting "
              f"`{' '.join(r['requirement'])}` ({r['best_measured']}). Predictions: the latency model's period at depth {DEPTH} on the throughput "
              f"run's live profile at the device's bandwidth estimate ({r['bandwidth_mbps']:.3f} Mbps)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=sorted({c.model for c in CASES}), action="append", help="run only these models")
    p.add_argument("--rate", type=float, action="append", metavar="MBPS",
                   help="run only the cases at these rates (the other cases' sections are kept from stream.json)")
    p.add_argument("--quota", type=float, default=0.1, help="device CPU fraction")
    p.add_argument("--frames-scale", type=float, default=1.0, help="multiply every frame count (min 4)")
    p.add_argument("--no-seed", action="store_true", help="skip the seed scenario section")
    p.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = p.parse_args(argv)
    if (problem := common.net_admin_problem()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cmd = common.command_line("bench.stream", argv)
    load = common.RunLoad()
    work = Path(tempfile.mkdtemp(prefix="coinfer-bench-stream-"))
    sections: list[str] = []
    results = []
    try:
        if not args.no_seed:
            sections += [*seed_section(), ""]
        kept = {} if args.no_write else previous_results()
        for case in CASES:
            if (args.only and case.model not in args.only) or (args.rate and case.rate_mbps not in args.rate):
                if case_key(case) in kept:            # an earlier run's section, saying when it ran
                    results.append(kept[case_key(case)])
                    sections += [*case_lines(results[-1]), ""]
                continue
            progress(f"{case.model} {case.scheme} at {case.rate_mbps:g} Mbps")
            r = run_case(case, case_config(case, args, work), work, None if args.no_write else OUT_DIR)
            r["run"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": cmd}
            results.append(r)
            sections += [*case_lines(r), ""]
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = common.header("Streams: pipelined frames and the throughput objective (bench.stream)", cmd, load)
    lines += [*sections, common.notes_line("stream")]
    if args.no_write:
        print("\n".join(lines))
    else:
        common.RESULTS.mkdir(exist_ok=True)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUT_DIR / "stream.json").write_text(json.dumps(results, indent=1))
        common.write("stream", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
