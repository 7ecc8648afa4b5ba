"""Child processes of the link bench: started from the repository root, stopped together.

`run_device_infer` runs `coinfer-device infer` inside the device namespace (entering only its
network: `testbed.netns_exec_prefix`) and returns its per-image and summary JSON lines.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.linkbench.config import DEVICE_START_S, PER_IMAGE_S, BenchError, LinkBenchConfig, device_common
from testbed import netns_exec_prefix
from testbed.processes import terminate_all

REPO = Path(__file__).resolve().parents[2]


class Children:
    """Child processes of the bench; all are stopped by stop_all() (TERM, then KILL)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self, grace_s: float = 5.0) -> None:
        terminate_all(self.procs, grace_s, min_wait_s=0.1)
        self.procs.clear()


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
