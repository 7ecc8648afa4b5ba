"""Run one planning job per scheme, here or as Ray tasks (`--engine plain|ray`).

Scheme evaluation is embarrassingly parallel. With `ray` each scheme is one Ray task that
asks for `cpus_per_task` CPUs and runs torch on that many threads, on a local Ray instance
(started and shut down here) or on the cluster at `ray_address`. Tasks return plain values
and never write: the caller (the driver) records each result as it arrives, so there is one
SQLite writer and one writer of a bank's files, and an interrupted run resumes as the plain
engine's does, from what the driver recorded.
"""
from __future__ import annotations

import argparse
import enum
import logging
import os
from typing import Callable, Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

INSTALL_HINT = "pip install 'opt-coinfer[ray]'"


class PlanEngine(enum.Enum):
    """Where the schemes run: one after another in this process, or as Ray tasks."""
    PLAIN = "plain"
    RAY = "ray"


class EngineUnavailableError(RuntimeError):
    """`--engine ray` without Ray installed."""


def _run_with_threads(fn: Callable[[T], R], item: T, threads: int) -> R:
    """A task's body: torch on its share of CPUs, then the job."""
    import torch
    torch.set_num_threads(threads)
    return fn(item)


def run_each(fn: Callable[[T], R], items: Iterable[T], engine: PlanEngine, cpus_per_task: int = 1,
             ray_address: str | None = None) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) for every item: in order with PLAIN, in order of completion with RAY
    (`fn` and the items must pickle). A failed task raises here after the others are cancelled."""
    items = list(items)
    if cpus_per_task < 1:
        raise ValueError(f"expected at least 1 CPU per task, got {cpus_per_task}")
    if engine is PlanEngine.PLAIN:
        for item in items:
            yield item, fn(item)
        return
    try:
        import ray
    except ImportError as e:
        if (e.name or "").split(".")[0] != "ray":
            raise
        raise EngineUnavailableError(f"--engine ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    if not items:
        return
    if ray_address is None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(address=ray_address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        task = ray.remote(num_cpus=cpus_per_task, max_retries=1)(_run_with_threads)
        pending = {task.remote(fn, item, cpus_per_task): item for item in items}
        log.info("%d tasks of %d CPUs on %s (%g CPUs)", len(items), cpus_per_task, ray_address or "a local Ray instance",
                 ray.cluster_resources().get("CPU", 0))
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                item = pending.pop(done[0])
                yield item, ray.get(done[0])
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
    finally:
        ray.shutdown()


# -- the flags, for every subcommand that runs schemes ----------------------------------------
def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=[e.value for e in PlanEngine], default=PlanEngine.PLAIN.value,
                   help="plain: one scheme after another here; ray: one scheme per Ray task, each on --threads "
                        "CPUs, results recorded by this process only (pip install 'opt-coinfer[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to run the tasks on (--engine ray; default: a local Ray instance)")


def check_engine_args(args: argparse.Namespace) -> PlanEngine:
    """The PlanEngine asked for; --ray-address only with --engine ray."""
    engine = PlanEngine(args.engine)
    if args.ray_address and engine is not PlanEngine.RAY:
        raise SystemExit("coinfer-plan: --ray-address: only with --engine ray")
    return engine
