"""`make bench-link`: the issue's matrix of shaped links, written to bench/results/link.md.

    python -m bench.link                      # as root; the whole matrix (~20-40 min here)
    python -m bench.link --only fmnist-vgg    # one model
    python -m bench.link --only fmnist-vgg --runtimes onnx --rates 0.5 --no-rate-change --limit-scale 0.05

- fmnist-vgg at 0.05, 0.5, 1 and 2 Mbps on Fashion-MNIST test images, auto planned over the
  cloud's shipped bank of fine-tuned tails (docs/bank.md), plus a tc rate change
  0.05 -> 2 Mbps during an auto run;
- vgg16_bn at 224x224 at 0.5, 1 and 2 Mbps with random-initialised weights (196 classes, as
  the seed's Stanford Cars head): timing and bytes on generated images (no accuracy is
  claimed from them); auto planned on the seed's accuracy files, imported at run time into
  a database under /tmp with recipe `seed-import` (the seed files stay in ../shared/seed);
  plus a tc rate change 0.5 -> 2 Mbps during an auto run under --latency-ratio 0.7;
- fmnist-resnet (the second shipped model, cuts at residual block outputs) at 0.05, 0.5 and
  2 Mbps on Fashion-MNIST test images, auto over its own shipped bank, beside fmnist-vgg.
Each model runs twice, the device on torch and then on ONNX Runtime (`--runtimes`): for the
ONNX device the model is exported (`coinfer-plan export`, the cloud's weights and class
count) into the temporary work directory, deleted at the end (vgg16_bn's is ~540 MB), and
only auto and the two single ends run, at the same rates; its results are `MODEL-onnx.*`,
and link.md sets the two devices side by side ("ONNX vs torch device").  The cloud is the
same torch server for both.
Device CPU quota 0.1 throughout (a Raspberry-Pi-class device, bench/results/netns.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench import common
from bench.linkbench.config import BenchError, LinkBenchConfig
from bench.linkbench.images import synthetic_images
from bench.linkbench.markdown import markdown, rate_change_lines, runtime_comparison_lines
from bench.linkbench.measure import run_link_bench
from bench.linkbench.processes import REPO
from bench.linkbench.rate_change import follow_rate_change

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seed"
SEED_FILES = ("latency_search.txt", "accuracy_search.txt")   # later file wins where both hold a scheme
SEED_BASE_ERROR = 0.151                                      # seed README: unmodified VGG-16-BN on Stanford Cars
SEED_DATASET = "stanford-cars"
OUT_DIR = common.RESULTS / "link"
RUNTIMES = ("torch", "onnx")                                 # device runtimes, in the order they run
EXPORT_TIMEOUT_S = 1800.0                                    # bound on one `coinfer-plan export`


@dataclass(frozen=True)
class MatrixEntry:
    model: str
    rates_mbps: tuple[float, ...]
    schemes: tuple[str, ...]
    limit: int
    rate_change: tuple[float, float] | None = None
    rate_change_requirement: tuple[str, ...] = ()   # auto requirement of the rate-change run
    num_classes: int | None = None
    input_hw: tuple[int, int] | None = None


MATRIX = (
    MatrixEntry("fmnist-vgg", (0.05, 0.5, 1.0, 2.0), ("1:8:4", "3:16:2", "3:64:4", "5:128:8"), limit=100,
                rate_change=(0.05, 2.0), rate_change_requirement=("--max-accuracy-loss", "0.01")),
    MatrixEntry("vgg16_bn", (0.5, 1.0, 2.0), ("1:9:8", "3:34:8", "12:400:8"), limit=20, num_classes=196,
                input_hw=(224, 224), rate_change=(0.5, 2.0), rate_change_requirement=("--latency-ratio", "0.7")),
    # the second shipped model (#14): cuts at residual block outputs, auto over its own bank
    MatrixEntry("fmnist-resnet", (0.05, 0.5, 2.0), ("1:2:2", "3:8:2", "5:64:1", "7:16:4"), limit=100),
)


def seed_db(path: Path) -> Path:
    """The seed's P+C-B*E files imported into a project database (recipe seed-import)."""
    from planner.accuracy_db import AccuracyDB, import_seed
    missing = [f for f in SEED_FILES if not (SEED_DIR / f).is_file()]
    if missing:
        raise SystemExit(f"seed files missing under {SEED_DIR}: {', '.join(missing)}")
    with AccuracyDB(path) as db:
        for name in SEED_FILES:
            import_seed(db, SEED_DIR / name, "vgg16_bn", SEED_DATASET, SEED_BASE_ERROR, recipe="seed-import")
    return path


def export_for_device(cfg: LinkBenchConfig, directory: Path) -> dict:
    """`coinfer-plan export` of what the cloud serves (its weights and class count) into
    `directory`, in a child process (torch and the exporter stay out of the bench)."""
    argv = [sys.executable, "-m", "planner", "export", "--model", cfg.model, "--out", str(directory), "--json"]
    if cfg.weights:
        argv += ["--weights", cfg.weights]
    if cfg.num_classes:
        argv += ["--num-classes", str(cfg.num_classes)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"export of {cfg.model}: timed out after {EXPORT_TIMEOUT_S:g} s") from e
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"export of {cfg.model} exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
    return json.loads(lines[-1]) | {"seconds": time.perf_counter() - t0}


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _cycle_errors(res: dict) -> list[float]:
    return [abs(row["predicted_cycle_s"] - row["measured_cycle_s"]) / row["measured_cycle_s"]
            for r in res["rates"] for row in r["rows"]
            if row["scheme"] != "auto" and row.get("predicted_cycle_s") and row.get("measured_cycle_s")]


def summary_lines(results: list[dict]) -> list[str]:
    lines = ["### Summary", "",
             "| model | runtime | tc Mbps | device estimate Mbps | estimate / goodput | live choice | "
             "best single-end | live / best single-end | median abs(pred-meas)/meas | "
             "by wall / images: best single-end | live / it |",
             "|---|---|---:|---:|---:|---|---|---:|---:|---|---:|"]
    for res in results:
        for r in res["rates"]:
            bw, ratio, med = r["bandwidth_mbps"], r["bandwidth_over_goodput"], r["median_rel_error"]
            lines.append(f"| {res['model']} | {res['runtime']} | {r['rate_mbps']:g} | "
                         f"{'n/a' if bw is None else f'{bw:.4g}'} | "
                         f"{'n/a' if ratio is None else f'{ratio:.3f}'} | {r['live_choice']} | "
                         f"{r['best_single_end']} | {r['live_over_best_single_end']:.3f} | "
                         f"{'n/a' if med is None else f'{med:.1%}'} | {r.get('best_single_end_per_frame') or '-'} | "
                         f"{_ratio(r.get('live_over_best_single_end_per_frame'))} |")
    medians = []
    for runtime in RUNTIMES:
        every = [row["rel_error"] for res in results if res["runtime"] == runtime for r in res["rates"]
                 for row in r["rows"] if row["scheme"] != "auto" and row["rel_error"] is not None]
        if every:
            medians.append(f"{runtime} device **{statistics.median(every):.1%}**")
    if medians:
        lines += ["", "Median abs(predicted - measured) / measured over every (model, rate, scheme): "
                  + ", ".join(medians) + " (target <= 10%); per model: "
                  + ", ".join(f"{res['label']} {res['median_rel_error_all_rates']:.1%}" for res in results
                              if res["median_rel_error_all_rates"] is not None) + "."]
    cycles = [f"{res['label']} {statistics.median(errs):.1%}" for res in results if (errs := _cycle_errors(res))]
    if cycles:
        lines += ["", "Seconds per frame of the whole run (wall / images: every quota stall, wherever the kernel "
                  "put it) against the model's max(latency, CPU per frame / share), median abs error: "
                  + ", ".join(cycles) + "."]
    for res in results:
        if res["rate_change"]:
            lines += ["", f"Rate change ({res['label']}): " + rate_change_lines(res["rate_change"])[0] + "."]
    comparison = runtime_comparison_lines(results)
    if comparison:
        lines += ["", "### ONNX vs torch device", "", *comparison]
    return lines


def progress(message: str) -> None:
    print(message, flush=True)


def _runtimes(text: str) -> tuple[str, ...]:
    names = {t.strip() for t in text.split(",") if t.strip()}
    if not names or names - set(RUNTIMES):
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(RUNTIMES)}, got {text!r}")
    return tuple(r for r in RUNTIMES if r in names)


def entry_config(m: MatrixEntry, args: argparse.Namespace, work: Path) -> LinkBenchConfig:
    """The torch device's configuration of one matrix entry (the ONNX device's is derived from it)."""
    limit = max(2, round(m.limit * args.limit_scale))
    cfg = LinkBenchConfig(model=m.model, rates_mbps=tuple(args.rates or m.rates_mbps), quota=args.quota or None,
                          schemes=m.schemes, limit=limit, num_classes=m.num_classes)
    if m.model == "fmnist-vgg":
        return replace(cfg, weights=args.fmnist_weights)   # auto plans over the cloud's shipped bank
    if m.model == "fmnist-resnet":
        return cfg                                         # shipped weights and bank, Fashion-MNIST
    images = synthetic_images(work / "images", limit, m.input_hw or (224, 224), 3)
    return replace(cfg, db=str(seed_db(work / "seed.sqlite")), recipe="seed-import", dataset_name=SEED_DATASET,
                   images=tuple(images), synthetic_images=True, input_size=m.input_hw)


def run_torch(m: MatrixEntry, cfg: LinkBenchConfig, out: Path, rate_change: bool) -> dict:
    """Every scheme at every rate on the torch device, then the entry's rate change."""
    res = run_link_bench(cfg, out, progress=progress)
    if m.rate_change and rate_change:
        progress(f"{m.model}: rate change {m.rate_change[0]:g} -> {m.rate_change[1]:g} Mbps during auto "
                 f"({' '.join(m.rate_change_requirement) or 'default requirement'})")
        rc = follow_rate_change(replace(cfg, requirement=m.rate_change_requirement), *m.rate_change,
                                progress=progress)
        res["rate_change"] = rc | {"requirement": list(m.rate_change_requirement)}
        (out / f"{cfg.label}.json").write_text(json.dumps(res, indent=1))
        (out / f"{cfg.label}.md").write_text("\n".join(markdown(res)) + "\n")
    return res


def run_onnx(cfg: LinkBenchConfig, work: Path, out: Path) -> dict:
    """Auto and the single ends at every rate on the ONNX device, from an export made here."""
    export_dir = work / f"export-{cfg.model}"
    progress(f"{cfg.model}: coinfer-plan export for the onnx device")
    try:
        exported = export_for_device(cfg, export_dir)
        progress(f"  {exported['bytes'] / 1e6:.1f} MB in {exported['seconds']:.0f} s")
        ocfg = replace(cfg, runtime="onnx", export=str(export_dir), schemes=())
        res = run_link_bench(ocfg, out, progress=progress) | {"export": exported}
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)      # vgg16_bn's is ~540 MB
    (out / f"{ocfg.label}.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.link", description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=[m.model for m in MATRIX], action="append", help="run only these models")
    p.add_argument("--runtimes", type=_runtimes, default=RUNTIMES, metavar="torch,onnx",
                   help="device runtimes to run, comma-separated (default both: torch, then onnx)")
    p.add_argument("--rates", type=float, nargs="+", metavar="MBPS",
                   help="tc rates for every model run, instead of the matrix's (trial runs)")
    p.add_argument("--no-rate-change", action="store_true", help="skip the rate-change runs (trial runs)")
    p.add_argument("--quota", type=float, default=0.1, help="device CPU fraction")
    p.add_argument("--fmnist-weights", help="fmnist-vgg state dict for both sides (default: the shipped one)")
    p.add_argument("--limit-scale", type=float, default=1.0, help="multiply every image count (min 2)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = p.parse_args(argv)
    if (problem := common.net_admin_problem()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cmd = common.command_line("bench.link", argv)
    load = common.RunLoad()
    work = Path(tempfile.mkdtemp(prefix="coinfer-bench-link-"))
    out = Path(tempfile.mkdtemp(prefix="coinfer-bench-link-out-")) if args.no_write else OUT_DIR
    if args.no_write:
        print(f"--no-write: the runs' JSON and live profiles go to {out}", file=sys.stderr)
    results = []
    try:
        for m in MATRIX:
            if args.only and m.model not in args.only:
                continue
            cfg = entry_config(m, args, work)
            if "torch" in args.runtimes:
                results.append(run_torch(m, cfg, out, rate_change=not args.no_rate_change))
            if "onnx" in args.runtimes:
                results.append(run_onnx(cfg, work, out))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = common.header("Live planning over shaped links (coinfer-bench link)", cmd, load)
    lines += [f"- device CPU quota: {args.quota:g} of one CPU; " + "; ".join(
        f"{r['label']}: {r['config']['limit']} images per scheme" for r in results)]
    lines += [f"- {r['model']} onnx device: `coinfer-plan export` of the cloud's weights, "
              f"{r['export']['bytes'] / 1e6:.1f} MB, {r['export']['seconds']:.0f} s" for r in results if "export" in r]
    lines += ["", *summary_lines(results), ""]
    for res in results:
        md = markdown(res)
        lines += [line.replace("](", "](link/") if line.startswith("![") else line for line in md]
    lines += [common.notes_line("link")]
    if args.no_write:
        print("\n".join(lines))
    else:
        common.write("link", lines)
    return 0

if __name__ == "__main__":
    sys.exit(main())
