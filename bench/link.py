"""`make bench-link`: the issue's matrix of shaped links, written to bench/results/link.md.

    python -m bench.link                      # as root; the whole matrix (~15 min here)
    python -m bench.link --only fmnist-vgg    # one model

- fmnist-vgg at 0.05, 0.5, 1 and 2 Mbps on Fashion-MNIST test images, auto planned over the
  cloud's shipped bank of fine-tuned tails (docs/bank.md), plus a tc rate change
  0.05 -> 2 Mbps during an auto run;
- vgg16_bn at 224x224 at 0.5, 1 and 2 Mbps with random-initialised weights (196 classes, as
  the seed's Stanford Cars head): timing and bytes on generated images (no accuracy is
  claimed from them); auto planned on the seed's accuracy files, imported at run time into
  a database under /tmp with recipe `seed-import` (the seed files stay in ../shared/seed);
  plus a tc rate change 0.5 -> 2 Mbps during an auto run under --latency-ratio 0.7.
Device CPU quota 0.1 throughout (a Raspberry-Pi-class device, bench/results/netns.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from bench import common
from bench.linkbench.config import LinkBenchConfig
from bench.linkbench.images import synthetic_images
from bench.linkbench.markdown import markdown, rate_change_lines
from bench.linkbench.measure import run_link_bench
from bench.linkbench.rate_change import follow_rate_change
from testbed import LinkUnavailable, require_net_admin

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seed"
SEED_FILES = ("latency_search.txt", "accuracy_search.txt")   # later file wins where both hold a scheme
SEED_BASE_ERROR = 0.151                                      # seed README: unmodified VGG-16-BN on Stanford Cars
SEED_DATASET = "stanford-cars"
OUT_DIR = common.RESULTS / "link"


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
    MatrixEntry("vgg16_bn", (0.5, 1.0, 2.0), ("1:9:8", "3:34:8", "12:400:8"), limit=5, num_classes=196,
                input_hw=(224, 224), rate_change=(0.5, 2.0), rate_change_requirement=("--latency-ratio", "0.7")),
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


def summary_lines(results: list[dict]) -> list[str]:
    lines = ["### Summary", "",
             "| model | tc Mbps | device estimate Mbps | estimate / goodput | live choice | best single-end | "
             "live / best single-end | median abs(pred-meas)/meas |", "|---|---:|---:|---:|---|---|---:|---:|"]
    for res in results:
        for r in res["rates"]:
            bw, ratio, med = r["bandwidth_mbps"], r["bandwidth_over_goodput"], r["median_rel_error"]
            lines.append(f"| {res['model']} | {r['rate_mbps']:g} | {'n/a' if bw is None else f'{bw:.4g}'} | "
                         f"{'n/a' if ratio is None else f'{ratio:.3f}'} | {r['live_choice']} | "
                         f"{r['best_single_end']} | {r['live_over_best_single_end']:.3f} | "
                         f"{'n/a' if med is None else f'{med:.1%}'} |")
    every = [row["rel_error"] for res in results for r in res["rates"] for row in r["rows"]
             if row["scheme"] != "auto" and row["rel_error"] is not None]
    if every:
        lines += ["", f"Median abs(predicted - measured) / measured over every (model, rate, scheme): "
                      f"**{statistics.median(every):.1%}** (target <= 10%); per model: "
                  + ", ".join(f"{res['model']} {res['median_rel_error_all_rates']:.1%}" for res in results
                              if res["median_rel_error_all_rates"] is not None) + "."]
    for res in results:
        if res["rate_change"]:
            lines += ["", f"Rate change ({res['model']}): " + rate_change_lines(res["rate_change"])[0] + "."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.link", description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=[m.model for m in MATRIX], action="append", help="run only these models")
    p.add_argument("--quota", type=float, default=0.1, help="device CPU fraction")
    p.add_argument("--fmnist-weights", help="fmnist-vgg state dict for both sides (default: the shipped one)")
    p.add_argument("--limit-scale", type=float, default=1.0, help="multiply every image count (min 2)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = p.parse_args(argv)
    try:
        require_net_admin()
    except LinkUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cmd = "python -m bench.link " + " ".join(argv if argv is not None else sys.argv[1:])
    load = common.RunLoad()
    work = Path(tempfile.mkdtemp(prefix="coinfer-bench-link-"))
    out = work / "out" if args.no_write else OUT_DIR
    results = []
    try:
        for m in MATRIX:
            if args.only and m.model not in args.only:
                continue
            limit = max(2, round(m.limit * args.limit_scale))
            cfg = LinkBenchConfig(
                model=m.model, rates_mbps=m.rates_mbps, quota=args.quota or None, schemes=m.schemes,
                limit=limit, num_classes=m.num_classes)
            if m.model == "fmnist-vgg":
                cfg = replace(cfg, weights=args.fmnist_weights)   # auto plans over the cloud's shipped bank
            else:
                hw = m.input_hw or (224, 224)
                images = synthetic_images(work / "images", limit, hw, 3)
                cfg = replace(cfg, db=str(seed_db(work / "seed.sqlite")), recipe="seed-import",
                              dataset_name=SEED_DATASET, images=tuple(images), synthetic_images=True,
                              input_size=m.input_hw)
            res = run_link_bench(cfg, out, progress=lambda s: print(s, flush=True))
            if m.rate_change:
                print(f"{m.model}: rate change {m.rate_change[0]:g} -> {m.rate_change[1]:g} Mbps during auto "
                      f"({' '.join(m.rate_change_requirement) or 'default requirement'})", flush=True)
                rc = follow_rate_change(replace(cfg, requirement=m.rate_change_requirement),
                                        *m.rate_change, progress=lambda s: print(s, flush=True))
                res["rate_change"] = rc | {"requirement": list(m.rate_change_requirement)}
                (out / f"{m.model}.json").write_text(json.dumps(res, indent=1))
                (out / f"{m.model}.md").write_text("\n".join(markdown(res)) + "\n")
            results.append(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = common.header("Live planning over shaped links (coinfer-bench link)", cmd, load)
    lines += [f"- device CPU quota: {args.quota:g} of one CPU; " + "; ".join(
        f"{r['model']}: {r['config']['limit']} images per scheme" for r in results), ""]
    lines += summary_lines(results) + [""]
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
