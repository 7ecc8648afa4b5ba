"""Stopping child processes: SIGTERM to all, one shared grace period, then SIGKILL."""
from __future__ import annotations

import subprocess
import time
from typing import Iterable


def terminate_all(procs: Iterable[subprocess.Popen], grace_s: float, min_wait_s: float = 0.0) -> None:
    """Terminate every process still running, wait for all within `grace_s` together (at least
    `min_wait_s` each), and kill the ones that did not exit."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(min_wait_s, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=grace_s)
