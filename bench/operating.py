"""`make bench-operating` (root): `auto` over the cloud's bank at operating points, measured.

For fmnist-vgg, at each operating point (device CPU quota, tbf-shaped uplink) one cloud
serves the shipped bank behind the shaped link, and the device runs, on the same
Fashion-MNIST test images: `auto` under --max-accuracy-loss 0.02 and 0.05, both single ends
and bank split schemes.  Each auto run is judged against what was measured in the same run:
did it pick the measured-fastest scheme among those meeting its requirement (accuracy
measured on these images against device-only's), does its own accuracy meet the
requirement, and its mean latency over the best's (target <= 1.10).

The points are where the planner predicts device-only and cloud-only to win (the bank
bench's predicted table, bench/results/bank.md); where a split wins nowhere for this model
(docs/bank.md), the split rows say by how much they lose.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace

from bench import common
from bench.linkbench.config import LinkBenchConfig, cloud_args
from bench.linkbench.processes import Children, run_device_infer
from testbed import ShapedLink, cleanup_stale

MODEL = "fmnist-vgg"
LOSSES = (0.02, 0.05)
SPLITS = ("1:8:4", "3:16:2", "0:2:8")     # bank schemes: the two and the cheapest upload


@dataclass(frozen=True)
class Point:
    quota: float          # device CPU fraction of one core
    rate_mbps: float      # tbf uplink rate
    predicted: str        # what bench/results/bank.md's predicted table says wins there


POINTS = (Point(1.0, 0.5, "device-only"), Point(0.1, 2.0, "cloud-only"), Point(0.1, 0.5, "cloud-only"))


def measure_point(pt: Point, limit: int, progress) -> dict:
    from cloud.daemon import CloudDaemon
    cfg = LinkBenchConfig(model=MODEL, quota=pt.quota, limit=limit, rates_mbps=(pt.rate_mbps,))
    runs: dict[str, dict] = {}
    children = Children()
    with ShapedLink(pt.rate_mbps) as link:
        cloud = CloudDaemon(cloud_args(cfg), host=link.cloud_addr, prefix=link.exec_prefix(link.cloud_ns))
        try:
            cloud.start()
            for loss in LOSSES:
                c = replace(cfg, requirement=("--max-accuracy-loss", f"{loss:g}"))
                runs[f"auto@{loss:g}"] = run_one(children, link, c, cloud.address, "auto", progress)
            for scheme in ("device-only", "cloud-only", *SPLITS):
                runs[scheme] = run_one(children, link, cfg, cloud.address, scheme, progress)
        finally:
            children.stop_all()
            cloud.stop(timeout_s=15)
    return {"point": pt, "runs": runs}


def run_one(children, link, cfg, address, scheme, progress) -> dict:
    t0 = time.perf_counter()
    frames, summary = run_device_infer(children, link.device_ns, cfg, address, scheme)
    progress(f"  quota {cfg.quota:g}, {cfg.rates_mbps[0]:g} Mbps, {scheme}: mean "
             f"{summary['latency_s']['mean']:.4f} s, top-1 {summary['top1_accuracy']:.4f} "
             f"({time.perf_counter() - t0:.0f} s)")
    return {"mean_s": summary["latency_s"]["mean"], "p50_s": summary["latency_s"]["p50"],
            "acc": summary["top1_accuracy"], "ran": summary["scheme"], "counts": summary["scheme_counts"],
            "fallbacks": summary["fallbacks"], "tail": summary.get("tail"), "images": summary["images"],
            "per_frame_s": 1 / summary["throughput_fps"] if summary.get("throughput_fps") else None,
            "cpu_s_per_frame": summary.get("cpu_s_per_frame"), "plans": summary.get("plans")}


def judge(res: dict) -> list[dict]:
    """One verdict per auto run and per measure: the measured-best scheme meeting its requirement,
    and auto's.  Two measures of a frame's latency: the device's per-frame timer ("mean s") and
    wall / images, the mean latency of a back-to-back stream counting every quota stall wherever
    the kernel put it (docs/benchmarks-notes.md#operating says why the second is the verdict)."""
    runs = res["runs"]
    base = runs["device-only"]["acc"]
    fixed = {s: r for s, r in runs.items() if not s.startswith("auto@")}
    out = []
    for loss in LOSSES:
        auto = runs[f"auto@{loss:g}"]
        eligible = {s: r for s, r in fixed.items() if r["acc"] >= base - loss}
        v = {"loss": loss, "auto_ran": auto["ran"], "auto_counts": auto["counts"], "auto_acc": auto["acc"],
             "meets": auto["acc"] >= base - loss}
        for key, measure in (("timer", "mean_s"), ("wall", "per_frame_s")):
            if auto.get(measure) is None or any(r.get(measure) is None for r in eligible.values()):
                v[key] = None
                continue
            best = min(eligible, key=lambda s: eligible[s][measure])
            v[key] = {"auto_s": auto[measure], "best": best, "best_s": eligible[best][measure],
                      "ratio": auto[measure] / eligible[best][measure], "picked_best": auto["ran"] == best}
        out.append(v)
    return out


def lines_for(results: list[dict], limit: int) -> list[str]:
    out = ["### Every scheme measured, per operating point", "",
           f"{limit} Fashion-MNIST test images per run; accuracy loss against device-only on the same images.", "",
           "| quota | uplink Mbps | scheme | ran | mean s | p50 s | s per frame (wall / images) | device CPU ms per frame | "
           "top-1 | loss | tail | fallbacks |",
           "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for res in results:
        pt, base = res["point"], res["runs"]["device-only"]["acc"]
        for s, r in res["runs"].items():
            ran = r["ran"] if len(r["counts"]) == 1 else ", ".join(f"{k} x{v}" for k, v in r["counts"].items())
            if r.get("plans") is not None:
                ran += f" ({r['plans']} plans)"
            per_frame = "-" if r.get("per_frame_s") is None else f"{r['per_frame_s']:.4f}"
            cpu = "-" if r.get("cpu_s_per_frame") is None else f"{1e3 * r['cpu_s_per_frame']:.2f}"
            out.append(f"| {pt.quota:g} | {pt.rate_mbps:g} | {s} | {ran} | {r['mean_s']:.4f} | {r['p50_s']:.4f} | "
                       f"{per_frame} | {cpu} | {r['acc']:.4f} | {base - r['acc']:+.4f} | {r['tail'] or '-'} | {r['fallbacks']} |")
    out += ["", "### auto against the measured best", "",
            "Verdict by wall / images (every quota stall counted); the device's per-frame timer beside it.", "",
            "| quota | uplink Mbps | predicted winner | loss <= | auto ran | auto meets loss | "
            "auto s per frame | measured best | its s per frame | auto / best | picked it | "
            "timer: best | timer: auto / best |",
            "|---:|---:|---|---:|---|---|---:|---|---:|---:|---|---|---:|"]
    verdicts = []
    for res in results:
        pt = res["point"]
        for v in judge(res):
            verdicts.append(v)
            w, t = v["wall"], v["timer"]
            wall = (f"{w['auto_s']:.4f} | {w['best']} | {w['best_s']:.4f} | {w['ratio']:.3f} | "
                    f"{'yes' if w['picked_best'] else 'no'}") if w else "- | - | - | - | -"
            timer = f"{t['best']} | {t['ratio']:.3f}" if t else "- | -"
            out.append(f"| {pt.quota:g} | {pt.rate_mbps:g} | {pt.predicted} | {v['loss']:g} | {v['auto_ran']} | "
                       f"{'yes' if v['meets'] else 'NO'} | {wall} | {timer} |")
    walls = [v["wall"] for v in verdicts if v["wall"]]
    timers = [v["timer"] for v in verdicts if v["timer"]]
    out += ["", f"By wall / images: auto picked the measured best in {sum(w['picked_best'] for w in walls)} of "
                f"{len(walls)} runs, worst auto / best {max(w['ratio'] for w in walls):.3f} (target <= 1.10); "
                f"it met its accuracy requirement in {sum(v['meets'] for v in verdicts)} of {len(verdicts)}. "
                f"By the per-frame timer: best picked in {sum(t['picked_best'] for t in timers)} of {len(timers)}, "
                f"worst ratio {max(t['ratio'] for t in timers):.3f}."]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.operating", description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=2000, help="images per run")
    p.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = p.parse_args(argv)
    if (problem := common.net_admin_problem()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cmd = common.command_line("bench.operating", argv)
    load = common.RunLoad()
    cleanup_stale()
    results = []
    for pt in POINTS:
        print(f"quota {pt.quota:g}, {pt.rate_mbps:g} Mbps (predicted: {pt.predicted})", flush=True)
        results.append(measure_point(pt, args.limit, lambda s: print(s, flush=True)))
    lines = common.header("auto at operating points, measured (fmnist-vgg over its bank)", cmd, load)
    lines += lines_for(results, args.limit) + ["", common.notes_line("operating")]
    if args.no_write:
        print("\n".join(lines))
    else:
        common.write("operating", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
