"""Run `coinfer-cloud serve` as a child process and learn its address (demo, benches, tests)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class CloudDaemon:
    """`python -m cloud serve --port 0 ARGS`; the address comes from its first stdout line."""

    def __init__(self, args: list[str], host: str = "127.0.0.1", prefix: list[str] | None = None,
                 env: dict[str, str] | None = None, drain_stderr: bool = False):
        self.extra_env = env or {}               # added to this process's environment
        # a long run's log (e.g. Ray's warnings while a node is lost) would fill the pipe and
        # block the daemon; drained, its last lines are kept in `stderr_tail`
        self.drain_stderr = drain_stderr
        self.stderr_tail: deque[str] = deque(maxlen=200)
        self.argv = [*(prefix or []), sys.executable, "-m", "cloud", "serve", "--host", host,
                     "--port", "0", *args]
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self) -> "CloudDaemon":
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            err = self.proc.stderr.read().strip().splitlines()
            raise RuntimeError(f"cloud did not start: {err[-1] if err else line!r}")
        self.address = line.split("listening on ", 1)[1].strip()
        if self.drain_stderr:
            threading.Thread(target=self.stderr_tail.extend, args=(self.proc.stderr,), daemon=True).start()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Signal, wait, and return the exit status (killed if it does not exit in time)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> "CloudDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
