"""A trace of refusals: one structured log line per refused call or internal error.

Each line carries time, peer, method, request id, status code and reason (never a token or
a payload; client strings clipped). A token bucket bounds the lines per second, so a flood
of bad calls cannot fill the disk; the next line written says how many were suppressed.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import grpc

from cloud.errors import clip

log = logging.getLogger(__name__)


class RefusalTrace:
    def __init__(self, rate_per_s: float = 10.0, burst: int = 50,
                 clock: Callable[[], float] = time.monotonic):
        self.rate_per_s = rate_per_s        # sustained lines per second
        self.burst = burst                  # lines written back to back before the rate applies
        self.clock = clock
        self.suppressed_total = 0           # lines not written since start
        self._tokens = float(burst)
        self._last = clock()
        self._pending = 0                   # suppressed since the last written line
        self._lock = threading.Lock()

    def _admit(self) -> int | None:
        """Suppressed count to report with this line, or None to suppress it."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
            self._last = now
            if self._tokens < 1:
                self._pending += 1
                self.suppressed_total += 1
                return None
            self._tokens -= 1
            pending, self._pending = self._pending, 0
            return pending

    def record(self, code: grpc.StatusCode, peer: str, method: str, request_id: str, reason: str) -> None:
        """Log one refusal (a status the server chose) or, for INTERNAL, one internal error."""
        suppressed = self._admit()
        if suppressed is None:
            return
        fields = {"peer": clip(peer, 64), "method": clip(method, 64), "request_id": clip(request_id, 64),
                  "code": code.name, "reason": clip(reason)}
        if suppressed:
            fields["suppressed"] = suppressed
        internal = code == grpc.StatusCode.INTERNAL
        log.log(logging.ERROR if internal else logging.WARNING, "internal error" if internal else "refused",
                extra={"fields": fields})
