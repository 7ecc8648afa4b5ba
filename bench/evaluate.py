"""Scheme-evaluation benchmark: `python -m bench.evaluate`.

1. Seconds per `coinfer-plan evaluate` (build, fine-tune, test on the 10,000 test images)
   for 0, 0.25 and 1 fine-tune epochs, per scheme, on this machine's CPU.
2. Top-1 error of aggressive schemes (1-2 channels at 1-2 bits) without fine-tuning and
   after it: the accuracy that fine-tuning recovers, against the unmodified model.

Rows go to a scratch database (not the shipped one), artifacts to a scratch directory.
Prints markdown and writes it to bench/results/evaluate.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import load_average, machine
from planner.accuracy_db import AccuracyDB
from planner.evaluate import evaluate
from planner.train import FINETUNE_CONFIG
from planner.scheme import Scheme

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "evaluate.md"


@dataclass(frozen=True)
class BenchConfig:
    """What the evaluation benchmark measures."""

    model: str = "fmnist-vgg"
    schemes: tuple[str, ...] = ("1:1:1", "2:2:1", "4:2:2")   # aggressive: 1-2 channels, 1-2 bits
    epochs: tuple[float, ...] = (0.0, 0.25, 1.0)               # fine-tune budgets compared
    seed: int = 0
    threads: int = 2                                            # torch CPU threads


def run(cfg: BenchConfig, out: Path | None = None, progress: bool = True) -> str:
    """Evaluate every scheme at every budget, smallest budgets first; after each evaluation
    the markdown so far is written to `out`, so an interrupted run still leaves its figures."""
    torch.set_num_threads(cfg.threads)
    by: dict[tuple[str, float], object] = {}
    load_first = load_average()
    text = ""
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp, \
            AccuracyDB(Path(tmp) / "bench.sqlite") as db:
        for e in cfg.epochs:
            for s in cfg.schemes:
                ev = evaluate(cfg.model, Scheme.parse(s), e, db, seed=cfg.seed,
                              artifact_dir=Path(tmp) / "artifacts", progress=progress,
                              finetune=dataclasses.replace(FINETUNE_CONFIG, threads=cfg.threads))
                by[s, e] = ev
                log.info("%s ft%g: error %.4f, %.1f s", s, e, ev.record.top1_error, ev.record.seconds)
                text = render(cfg, by, load_first)
                if out is not None:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(text)
    return text


def recipe() -> str:
    """The fine-tuning recipe, read from the config the evaluations use."""
    ft = FINETUNE_CONFIG
    aug = f"crop (pad {ft.pad}) + flip" if ft.augment else "no augmentation"
    return (f"SGD (momentum {ft.momentum:g}, weight decay {ft.weight_decay:g}), lr {ft.lr:g} "
            f"{'with ' + format(ft.warmup, 'g') + ' warm-up then ' if ft.warmup else ''}cosine, "
            f"batch {ft.batch_size}, {aug}")


def render(cfg: BenchConfig, by: dict, load_first: float) -> str:
    """Markdown of the evaluations done so far; cells not run yet say so."""
    first = next(iter(by.values()))
    base = first.base_error
    lines = [
        "# Scheme evaluation benchmark",
        "",
        f"Machine: {machine()}; load average (1 min) {load_first:.1f} at the start, "
        f"{load_average():.1f} at the last row; torch {torch.__version__} with {cfg.threads} thread(s).",
        "",
        f"Command: `{shlex.join(['python', '-m', 'bench.evaluate', *sys.argv[1:]])}`",
        "",
        f"Model {cfg.model}, fine-tune seed {cfg.seed}. One evaluation = build the pruned network, "
        f"fine-tune E epochs ({recipe()}), "
        f"test on all {first.record.test_size} test images. Unmodified model: top-1 error {base:.4f}.",
        "",
        "## Seconds per evaluation",
        "",
        "| scheme | " + " | ".join(f"E={e:g}: total s (fine-tune s / test s)" for e in cfg.epochs) + " |",
        "|---|" + "---|" * len(cfg.epochs),
    ]
    for s in cfg.schemes:
        cells = [f"{by[s, e].record.seconds:.1f} ({by[s, e].finetune_s:.1f} / {by[s, e].test_s:.1f})"
                 if (s, e) in by else "not run" for e in cfg.epochs]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Accuracy recovered by fine-tuning (aggressive schemes)",
        "",
        "Top-1 error (accuracy loss against the unmodified model, percentage points); the last "
        "column is the error that the largest budget run removed against no fine-tuning.",
        "",
        "| scheme | " + " | ".join(f"E={e:g}" for e in cfg.epochs) + " | recovered |",
        "|---|" + "---|" * (len(cfg.epochs) + 1),
    ]
    for s in cfg.schemes:
        cells = [f"{by[s, e].record.top1_error:.4f} ({100 * by[s, e].accuracy_loss:+.2f})"
                 if (s, e) in by else "not run" for e in cfg.epochs]
        done = [e for e in cfg.epochs if (s, e) in by]
        gain = (f"{100 * (by[s, done[0]].record.top1_error - by[s, done[-1]].record.top1_error):.2f} pp "
                f"(E={done[-1]:g})" if len(done) > 1 and done[0] == 0 else "-")
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schemes", default=",".join(BenchConfig.schemes), help="comma-separated P:C:B")
    p.add_argument("--epochs", default=",".join(f"{e:g}" for e in BenchConfig.epochs),
                   help="comma-separated fine-tune epochs")
    p.add_argument("--seed", type=int, default=BenchConfig.seed)
    p.add_argument("--threads", type=int, default=BenchConfig.threads)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = BenchConfig(schemes=tuple(s.strip() for s in args.schemes.split(",") if s.strip()),
                      epochs=tuple(float(e) for e in args.epochs.split(",") if e.strip()),
                      seed=args.seed, threads=args.threads)
    text = run(cfg, out=args.out, progress=not args.no_progress)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
