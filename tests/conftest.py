"""Shared fixtures: a real cloud daemon as a separate process on an ephemeral port."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class CloudProcess:
    """`python -m cloud serve --port 0 ...` with its address read from the first stdout line."""

    def __init__(self, *args: str, startup_timeout_s: float = 120.0):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + startup_timeout_s
        line = self.proc.stdout.readline()
        if not line.startswith("listening on ") or time.monotonic() > deadline:
            self.proc.kill()
            raise RuntimeError(f"cloud did not start: {line!r} {self.proc.stderr.read()}")
        self.address = line.split("listening on ", 1)[1].strip()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="session")
def fmnist_cloud():
    cloud = CloudProcess("--model", "fmnist-vgg", "--profile-repeats", "1")
    yield cloud
    assert cloud.stop() == 0, "cloud did not exit 0 on SIGTERM"
