"""`coinfer-plan train`, `evaluate` and `evaluate-grid`: thin adapters over planner.train/evaluate."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from planner.models import model_names
from planner.parallel import add_engine_args, check_engine_args
from planner.scheme import Scheme
from planner.registry import UnsupportedModelError
from planner.train import FINETUNE_CONFIG, TrainConfig, require_trainable, train_model, train_record

_DEFAULTS = TrainConfig()
_DATASET_HELP = ("fashion-mnist or imagefolder:DIR (DIR/train/CLASS/*.png|jpg and DIR/test/CLASS/*, decoded to "
                 "the model's input size and channels; default: the model's own dataset)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a registry model on its dataset (CPU)",
                              description="Train a model from scratch with a fixed seed and save "
                                          "its state dict, plus a JSON record (sha256, command, accuracy).")
    p.add_argument("--model", required=True, choices=model_names())
    p.add_argument("--dataset", default=None, help=_DATASET_HELP)
    p.add_argument("--epochs", type=float, default=_DEFAULTS.epochs, help="passes over the training set")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="peak learning rate")
    p.add_argument("--threads", type=int, default=_DEFAULTS.threads, help="torch CPU threads")
    p.add_argument("--train-limit", type=int, default=None, help="first N training images only")
    p.add_argument("--test-limit", type=int, default=None, help="first N test images only")
    p.add_argument("--out", type=Path, default=None,
                   help="state dict file (default: planner/weights/<model>.pt; with another --dataset "
                        "runs/weights/<model>-<DIR name>.pt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    p.set_defaults(func=_train)

    e = subparsers.add_parser("evaluate", help="build, fine-tune, test and record one P:C:B scheme",
                              description="Prune conv P to its C most important channels, quantize the "
                                          "cut to B bits, fine-tune, test on the full test split, record "
                                          "the row in the accuracy database and save the scheme artifact.")
    _common_eval_args(e)
    e.add_argument("--scheme", required=True, type=Scheme.parse, help="P:C:B, e.g. 2:16:4")
    e.add_argument("--artifact-dir", type=Path, default=None,
                   help="where the scheme artifact goes (default: runs/artifacts)")
    e.set_defaults(func=_evaluate)

    g = subparsers.add_parser("evaluate-grid", help="evaluate a grid of schemes into the accuracy database",
                              description="Every partition x C x B (plus the unmodified model), "
                                          "skipping rows the database already holds for the recipe.")
    _common_eval_args(g)
    g.add_argument("--channels", default="1,2,4,8,16,all", help="comma-separated C values; 'all' = full width")
    g.add_argument("--bits", default="1,2,4,8", help="comma-separated B values")
    g.add_argument("--partitions", default=None, help="comma-separated P values (default: every partition)")
    g.add_argument("--artifact-dir", type=Path, default=None,
                   help="save each scheme's artifact there (default: none saved, the row's artifact is null)")
    g.add_argument("--force", action="store_true", help="re-evaluate rows already present")
    add_engine_args(g)
    g.set_defaults(func=_evaluate_grid)


def _train(args: argparse.Namespace) -> int:
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                      threads=args.threads, train_limit=args.train_limit)
    result = train_model(args.model, cfg, out=args.out, test_limit=args.test_limit,
                         progress=not args.no_progress, dataset=args.dataset)
    record = train_record(result)
    record_path = result.weights_path.with_suffix(".json")
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{result.model}: top-1 accuracy {result.top1_accuracy:.4f} on {result.test_size} test images, "
          f"{result.seconds:.0f} s; weights {result.weights_path} sha256 {result.sha256}")
    if args.json:
        print(json.dumps(record))
    return 0


def _common_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, choices=model_names())
    p.add_argument("--dataset", default=None, help=_DATASET_HELP)
    p.add_argument("--finetune-epochs", type=float, default=0.25,
                   help="fine-tune passes over the training set (fractions allowed; 0: none)")
    p.add_argument("--db", type=Path, default=None,
                   help="accuracy database (default: the model's shipped planner/db/<model>.sqlite)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", type=Path, default=None, help="trained state dict (default: the shipped one)")
    p.add_argument("--train-limit", type=int, default=None, help="fine-tune on the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="test on the first N test images")
    p.add_argument("--threads", type=int, default=FINETUNE_CONFIG.threads, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")


def _finetune_config(args: argparse.Namespace) -> TrainConfig:
    torch.set_num_threads(args.threads)  # testing runs outside `fit`, which sets it for training
    return dataclasses.replace(FINETUNE_CONFIG, threads=args.threads)


def _open_db(args: argparse.Namespace):
    from planner.accuracy_db import AccuracyDB
    from planner.evaluate import default_db_path
    return AccuracyDB(args.db if args.db is not None else default_db_path(args.model))


def _evaluation_json(ev) -> dict:
    rec = ev.record
    return {"scheme": rec.scheme, "top1_error": rec.top1_error, "accuracy_loss": ev.accuracy_loss,
            "seconds": round(rec.seconds, 3), "base_error": ev.base_error, "model": rec.model,
            "dataset": rec.dataset, "recipe": rec.recipe, "test_size": rec.test_size,
            "channel_indices": list(ev.channel_indices), "finetune_s": round(ev.finetune_s, 3),
            "test_s": round(ev.test_s, 3), "artifact_path": rec.artifact_path,
            "artifact_sha256": rec.artifact_sha256}


def _refuse_graph_artifacts(args: argparse.Namespace) -> None:
    """A graph model's scheme is the trained network masked at the cut (planner.evaluate): it
    has no pruned network to save, so an explicit --artifact-dir is refused by name."""
    from planner.models import BuilderKind, get_spec
    if args.artifact_dir is not None and get_spec(args.model).builder is not BuilderKind.VGG_CFG:
        raise UnsupportedModelError(f"{args.model} is a graph model: its schemes write no artifact (the cloud runs "
                                    "the unmodified tail or a bank entry); drop --artifact-dir")


def _evaluate(args: argparse.Namespace) -> int:
    from planner.evaluate import evaluate
    # before the database is opened (or created)
    require_trainable(args.model, args.weights, args.dataset, trained=True)
    _refuse_graph_artifacts(args)
    with _open_db(args) as db:
        ev = evaluate(args.model, args.scheme, args.finetune_epochs, db, seed=args.seed,
                      train_limit=args.train_limit, test_limit=args.test_limit,
                      artifact_dir=args.artifact_dir, weights=args.weights,
                      progress=not args.no_progress, finetune=_finetune_config(args), dataset=args.dataset)
        db_path = db.path
    rec = ev.record
    print(f"{rec.model} {rec.scheme} ({rec.recipe}): top-1 error {rec.top1_error:.4f}, "
          f"accuracy loss {ev.accuracy_loss:+.4f} (base {ev.base_error:.4f}) on {rec.test_size} images, "
          f"{rec.seconds:.1f} s; recorded in {db_path}; artifact {rec.artifact_path}")
    if args.json:
        print(json.dumps(_evaluation_json(ev)))
    return 0


def _int_list(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"coinfer-plan: expected comma-separated integers for {name}, got {text!r}") from None


def _evaluate_grid(args: argparse.Namespace) -> int:
    from planner.evaluate import ensure_base_record, evaluate_detached, grid_schemes, recipe_name
    from planner.models import conv_widths, get_spec
    require_trainable(args.model, args.weights, args.dataset, trained=True)
    _refuse_graph_artifacts(args)
    from planner.parallel import run_each
    engine = check_engine_args(args)
    channels = [None if c.strip() == "all" else int(c) for c in args.channels.split(",") if c.strip()]
    schemes = grid_schemes(args.model, channels, _int_list(args.bits, "--bits"))
    if args.partitions is not None:
        keep = set(_int_list(args.partitions, "--partitions"))
        schemes = [s for s in schemes if s.partition in keep]
    recipe = recipe_name(args.finetune_epochs, args.seed, args.train_limit, args.test_limit)
    finetune = _finetune_config(args)
    rows = []
    t0 = time.perf_counter()
    with _open_db(args) as db:
        base = ensure_base_record(args.model, db, args.test_limit, args.weights, not args.no_progress,
                                  args.dataset)
        dataset = base.dataset
        todo = [s for s in schemes if args.force or db.get(args.model, dataset, str(s), recipe) is None]
        # coarse to fine: the widest cuts at the most bits first, across every partition, so an
        # interrupted grid still covers every partition (resume by running the command again)
        widths = conv_widths(get_spec(args.model))
        todo.sort(key=lambda s: (s.channels != widths[s.partition],
                                 0 if s.channels == widths[s.partition] else -s.channels, -s.bits, s.partition))
        print(f"{args.model}: {len(schemes)} schemes, {len(schemes) - len(todo)} already in {db.path} "
              f"for recipe {recipe}; evaluating {len(todo)}; base error {base.top1_error:.4f}", flush=True)
        bar = tqdm(total=len(todo), desc=f"grid {args.model}", unit="scheme", disable=args.no_progress,
                   dynamic_ncols=True)
        job = functools.partial(evaluate_detached, model_name=args.model, finetune_epochs=args.finetune_epochs,
                                base=base, seed=args.seed, train_limit=args.train_limit,
                                test_limit=args.test_limit, save=args.artifact_dir is not None, progress=False,
                                # absolute: a task's working directory is Ray's, not ours
                                artifact_dir=args.artifact_dir and args.artifact_dir.resolve(),
                                weights=args.weights and args.weights.resolve(),
                                finetune=finetune, dataset=args.dataset)
        # each row is recorded here as it arrives (one SQLite writer); an interrupted grid resumes
        for i, (scheme, ev) in enumerate(run_each(job, todo, engine, args.threads, args.ray_address), 1):
            db.upsert(ev.record)
            rows.append(_evaluation_json(ev))
            bar.update()
            tqdm.write(f"[{i}/{len(todo)}] {scheme}: top-1 error {ev.record.top1_error:.4f} "
                       f"loss {ev.accuracy_loss:+.4f} {ev.record.seconds:.1f} s")
        bar.close()
    if args.json:
        print(json.dumps({"model": args.model, "recipe": recipe, "evaluated": len(rows),
                          "skipped": len(schemes) - len(todo), "base_error": base.top1_error,
                          "seconds": round(sum(r["seconds"] for r in rows), 1),
                          "wall_s": round(time.perf_counter() - t0, 1), "engine": engine.value, "rows": rows}))
    return 0
