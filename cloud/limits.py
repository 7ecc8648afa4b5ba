"""Bounds that keep the cloud from growing under load: in-flight memory and an answer cache."""
from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

from cloud.errors import OverloadedError


class InflightBudget:
    """Admits work while the bytes reserved by calls in progress stay within `limit_bytes`."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._used = 0
        self._calls = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        with self._lock:
            if self._used + nbytes > self.limit_bytes:
                raise OverloadedError(
                    f"server memory bound: {self._used} of {self.limit_bytes} bytes in flight, "
                    f"this request needs {nbytes}; retry later")
            self._used += nbytes
            self._calls += 1
        try:
            yield
        finally:
            with self._lock:
                self._used -= nbytes
                self._calls -= 1
                self._idle.notify_all()

    @property
    def calls(self) -> int:
        return self._calls

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no call is in flight or the timeout passes; True when idle."""
        with self._lock:
            return self._idle.wait_for(lambda: self._calls == 0, timeout=timeout_s)


class AnswerCache:
    """The last `capacity` answers by request id, so a retried frame gets the same answer."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._items: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str):
        if not key:
            return None
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value) -> None:
        if not key or self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
