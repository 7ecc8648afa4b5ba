"""Bounds that keep the cloud from growing under load: in-flight memory, concurrent calls,
open streams and an answer cache that is counted in the memory bound."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator

from cloud.errors import InvalidFieldError, MissingInputError, OverloadedError


class InflightBudget:
    """Admits work while the bytes reserved by calls in progress, plus the bytes `held`
    elsewhere (the answer cache), stay within `limit_bytes`."""

    def __init__(self, limit_bytes: int, held: Callable[[], int] = lambda: 0):
        self.limit_bytes = limit_bytes
        self.held = held
        self._used = 0
        self._calls = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        with self._lock:
            held = self.held()
            if self._used + held + nbytes > self.limit_bytes:
                raise OverloadedError(
                    f"server memory bound: {self._used} of {self.limit_bytes} bytes in flight "
                    f"and {held} held by the answer cache, this request needs {nbytes}; retry later")
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

    @property
    def used_bytes(self) -> int:
        return self._used

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no call is in flight or the timeout passes; True when idle."""
        with self._lock:
            return self._idle.wait_for(lambda: self._calls == 0, timeout=timeout_s)


class Slots:
    """At most `limit` holders at once (concurrent calls, open streams); beyond, OverloadedError."""

    def __init__(self, limit: int, what: str):
        self.limit = limit
        self.what = what
        self._held = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self._held >= self.limit:
                raise OverloadedError(f"server bound: {self._held} of {self.limit} {self.what} in use; retry later")
            self._held += 1

    def release(self) -> None:
        with self._lock:
            self._held -= 1

    @contextmanager
    def take(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    @property
    def held(self) -> int:
        return self._held


# Per-entry bookkeeping beyond the answer's serialized size (key tuple, OrderedDict node,
# message object), bytes: a deliberate over-estimate, so the memory bound stays a bound.
ENTRY_OVERHEAD_BYTES = 512


def request_digest(serialized: bytes) -> bytes:
    """16-byte BLAKE2b of a serialized request: a cache hit needs the same bytes."""
    return hashlib.blake2b(serialized, digest_size=16).digest()


class AnswerCache:
    """Answers by (caller, request id, request digest), so that a retried frame gets the same
    answer and nothing else does: another caller, or another request under a known id, misses.
    Bounded in entries and in bytes; `nbytes` is counted in the server's memory bound."""

    def __init__(self, capacity: int = 4096, max_bytes: int = 32 << 20):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.hits = 0
        self.nbytes = 0
        self._items: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple | None):
        if key is None:
            return None
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: tuple | None, value, value_bytes: int) -> None:
        if key is None or self.capacity <= 0:
            return
        size = value_bytes + sum(len(k) for k in key) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._items[key] = (value, size)
            self.nbytes += size
            while len(self._items) > self.capacity or self.nbytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.nbytes -= dropped

    def __len__(self) -> int:
        return len(self._items)


# Longest client-chosen strings a request may carry, characters: ids and names are
# short; anything longer is refused before it is cached, logged or echoed.
MAX_REQUEST_ID_CHARS = 128
MAX_NAME_CHARS = 128


def check_request(req) -> None:
    """Bounds of a coinfer.v1.InferRequest's own strings and its input, before any look-up."""
    for name, limit in (("request_id", MAX_REQUEST_ID_CHARS), ("model", MAX_NAME_CHARS),
                        ("artifact_sha256", MAX_NAME_CHARS), ("bank_scheme", MAX_NAME_CHARS)):
        n = len(getattr(req, name))
        if n > limit:
            raise InvalidFieldError(f"{name}: expected at most {limit} characters, got {n}")
    if req.WhichOneof("input") is None:
        raise MissingInputError("input: expected a feature_map or an image, got neither")
