"""TCP goodput over a ShapedLink: a bulk transfer device -> cloud, timed at the receiver.

The two ends are `python -m testbed.tcp_source` (device namespace) and `python -m
testbed.tcp_sink` (cloud namespace); both stop at the deadline whatever happens.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testbed.link import ShapedLink
from testbed.namespaces import DEFAULT_PREFIX
from testbed.tbf import TbfShape

ROOT = Path(__file__).resolve().parents[1]    # where `python -m testbed.…` finds the package
BASE_PORT = 5201


@dataclass(frozen=True)
class Transfer:
    """Receiver-side record of one bulk TCP transfer device -> cloud."""
    marks: tuple[tuple[float, int], ...]   # (time.monotonic() s, cumulative payload bytes)
    complete: bool                         # EOF seen before the deadline

    @property
    def total_bytes(self) -> int:
        return self.marks[-1][1] if self.marks else 0

    def goodput_mbps(self, start_s: float | None = None, end_s: float | None = None) -> float:
        """Payload rate between two monotonic times (default: first to last byte).

        Bytes in the first recv (the tbf bucket's burst at line speed) are not counted.
        """
        pts = [(t, b) for t, b in self.marks
               if (start_s is None or t >= start_s) and (end_s is None or t <= end_s)]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            raise ValueError(f"expected >= 2 receive marks in the window, got {len(pts)}")
        return (pts[-1][1] - pts[0][1]) * 8 / (pts[-1][0] - pts[0][0]) / 1e6


def measure_transfer(link: ShapedLink, nbytes: int, deadline_s: float, port: int = BASE_PORT,
                     during=None) -> Transfer:
    """Send `nbytes` device -> cloud over TCP; `during(link)` runs while the bytes flow."""
    py = sys.executable
    server = link.run_in(link.cloud_ns, [py, "-m", "testbed.tcp_sink", link.cloud_addr, str(port),
                                         str(deadline_s)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"throughput server did not start: {server.stderr.read().strip()}")
        client = link.run_in(link.device_ns, [py, "-m", "testbed.tcp_source", link.cloud_addr, str(port),
                                              str(nbytes), str(deadline_s)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if during is not None:
            during(link)
        out, err = server.communicate(timeout=deadline_s + 5)
        client.wait(timeout=5)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=5)
    if not out.strip():
        raise RuntimeError(f"throughput server said nothing: {err.strip()}")
    rec = json.loads(out.strip().splitlines()[-1])
    return Transfer(tuple((float(t), int(b)) for t, b in rec["marks"]), bool(rec["eof"]))


def measure_goodput(rate_mbps: float, seconds: float = 2.5, repeats: int = 1,
                    prefix: str = DEFAULT_PREFIX) -> list[float]:
    """TCP goodput (Mbps) of `repeats` bulk transfers of ~`seconds` each at the tbf rate."""
    shape = TbfShape(rate_mbps)
    nbytes = int(shape.expected_goodput_mbps * 1e6 / 8 * seconds)
    with ShapedLink(rate_mbps, prefix=prefix) as link:
        return [measure_transfer(link, nbytes, deadline_s=3 * seconds + 5, port=BASE_PORT + i)
                .goodput_mbps() for i in range(repeats)]
