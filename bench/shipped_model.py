"""A shipped model's figures, read back from what ships: `python -m bench.shipped_model --model fmnist-resnet`.

Writes bench/results/<model>.md from the training record beside the weights (command, wall
time, top-1), the shipped bank's manifest (each scheme's fine-tuned error, its build seconds)
and the shipped accuracy database (the same schemes' untuned `ft0-` rows), plus the bank's
size on disk.  It measures nothing itself: every figure is one the training, the grid or the
bank build measured and recorded.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from bench.common import header, write
from planner.accuracy_db import BASE_SCHEME, AccuracyDB
from planner.bank import read_manifest, shipped_bank_dir
from planner.evaluate import default_db_path
from planner.models import WEIGHTS_DIR, get_spec


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def frontier_lines(model: str, profile_path: str, recipe: str, dataset: str) -> list[str]:
    """Which recorded split schemes are on the latency/accuracy frontier somewhere in 0.02-10
    Mbps x 1%-100% of the profiled device (planner.frontier.frontier_schemes), per recipe."""
    from planner.accuracy_db import load_view
    from planner.frontier import frontier_schemes
    from planner.profile import load_profile
    profile = load_profile(profile_path)
    bws, speeds = np.geomspace(0.02, 10, 15), np.geomspace(0.01, 1, 9)
    lines = [f"### Split schemes on the latency/accuracy frontier (profile `{profile_path}`; "
             f"{len(bws)} uplinks 0.02-10 Mbps x {len(speeds)} device speeds 0.01-1 of it)", "",
             "| rows | schemes on the frontier (operating points where each is, of "
             f"{len(bws) * len(speeds)}) |", "|---|---|"]
    for prefix in (recipe, "ft0-"):
        view = load_view([default_db_path(model)], model, dataset, recipe=prefix)
        hits = frontier_schemes(profile, view, bws, speeds)
        text = ", ".join(f"{s} ({n})" for s, n in sorted(hits.items(), key=lambda kv: -kv[1])) or "none"
        lines.append(f"| `{prefix}` ({len(view.errors)} schemes) | {text} |")
    return lines + [""]


def report(model: str, training_machine: str | None, profile: str | None = None) -> list[str]:
    spec = get_spec(model)
    rec = json.loads((WEIGHTS_DIR / spec.default_weights).with_suffix(".json").read_text())
    if "machine" in rec:
        m = rec["machine"]
        training_machine = f"{m['cpu']}, {m['cores']} cores, {m['cores_allowed']} allowed to the process"
    training_machine = f"{training_machine}; torch threads {rec['config']['threads']}"
    lines = header(f"Shipped model: {model}", f"python -m bench.shipped_model --model {model}")
    lines += ["### Training", "",
              f"- command: `{rec['command']}`",
              f"- training machine: {training_machine}",
              f"- wall time (training + testing): {rec['seconds']:.0f} s ({rec['seconds'] / 60:.1f} min)",
              f"- top-1 on the {rec['test_size']} {rec['dataset']} test images: {rec['top1_accuracy']:.4f}",
              f"- weights: `planner/weights/{rec['file']}`, sha256 `{rec['sha256'][:16]}...`,"
              f" {(WEIGHTS_DIR / rec['file']).stat().st_size / 1e6:.2f} MB", ""]
    bank = shipped_bank_dir(model)
    if bank is None:
        return lines + ["No shipped bank."]
    m = read_manifest(bank)
    with AccuracyDB(default_db_path(model), readonly=True) as db:
        ft0 = db.latest_matching(model, m.dataset, "ft0-")
        base = db.get(model, m.dataset, BASE_SCHEME)
        grid_rows = len(ft0)
    size = sum(f.stat().st_size for f in bank.iterdir() if f.is_file())
    lines += [f"### Bank `planner/banks/{model}` (recipe `{m.recipe}`)", "",
              f"Base top-1 error {m.base_top1_error:.4f}"
              + (f" (database row: {base.top1_error:.4f})" if base is not None else "")
              + f"; {grid_rows} `ft0-` rows in `planner/db/{model}.sqlite`.", "",
              "| scheme | bank top-1 error | untuned (ft0) top-1 error | bank loss | untuned loss | build s |",
              "|---|---:|---:|---:|---:|---:|"]
    for e in sorted(m.schemes, key=lambda e: (e.scheme.partition, e.scheme.channels, e.scheme.bits)):
        row = ft0.get(str(e.scheme))
        untuned = None if row is None else row.top1_error
        lines.append(f"| {e.scheme} | {e.top1_error:.4f} | {_pct(untuned)} | {e.accuracy_loss:+.4f} | "
                     f"{'-' if untuned is None else f'{untuned - m.base_top1_error:+.4f}'} | {e.seconds:.1f} |")
    total = sum(e.seconds for e in m.schemes)
    lines += ["", f"- on disk: {sum(1 for f in bank.iterdir() if f.is_file())} files, {size / 1e6:.2f} MB "
              f"({size / max(1, len(m.schemes)) / 1e3:.1f} kB per scheme)",
              f"- build: {total / 60:.1f} min summed over {len(m.schemes)} schemes (fine-tune + test on the "
              f"{m.schemes[0].test_size if m.schemes else 0} test images), mean {total / max(1, len(m.schemes)):.1f} s", ""]
    if profile is not None:
        lines += frontier_lines(model, profile, m.recipe, m.dataset)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shipped_model", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-resnet")
    p.add_argument("--training-machine", default="not recorded",
                   help="where the shipped weights were trained, for a record without `machine`")
    p.add_argument("--profile", default=None, help="latency profile: list the frontier's schemes over it")
    args = p.parse_args(argv)
    write(args.model, report(args.model, args.training_machine, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
