"""Frames in flight: up to `depth` frames over one InferStream, answers in frame order.

The head of frame n+1 runs on the device while frame n is on the link and in the cloud.
Each frame is prepared with the scheme its caller chose when it was submitted; nothing
here re-plans.  A frame that runs on the device (device-only, or a fallback) is held until
the frames before it are answered, so answers always come out in frame order.

Fail-over: when the stream ends with a fallback status (UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED), or its oldest frame waits longer than `timeout_s` for its answer,
every frame then in flight runs device-only, keeping its request id; answers that arrived
before the break stand.  So each frame is answered exactly once.  The next frame that needs
the cloud opens a new stream.

The link estimator sees only frames sent into an empty pipe (no other frame of the stream
unanswered when it was sent): their send-to-answer time is a round trip.  A frame sent
behind others waits for them on the link and in the cloud, so its send-to-answer time is
queueing plus round trip; and the time between consecutive answers measures the slowest
stage, which is the link only when the link is the bottleneck (with a faster link behind a
slower device head, it would read as slow as the head).  Queued frames still feed the codec
tables (zstd ratio, encode and decode seconds), which queueing does not touch.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import grpc
import numpy as np

from device.runner import FALLBACK_CODES, DeviceRunner, FrameResult
from planner.scheme import DEVICE_ONLY, Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb

log = logging.getLogger(__name__)

_END = object()   # the stream's answers ended without error


@dataclass
class _Frame:
    """One submitted frame until it is delivered."""

    image: np.ndarray               # (C, H, W) uint8
    label: int | None
    scheme: Scheme
    tag: Any                        # the caller's, returned with the result
    t0: float                       # perf_counter() when its preparation started
    req: pb.InferRequest | None = None
    head_s: float = 0.0
    encode_s: float = 0.0
    sent_at: float = 0.0            # perf_counter() when handed to the stream
    alone: bool = False             # sent while no other frame of its stream was unanswered
    result: FrameResult | None = None
    ready_at: float = 0.0           # perf_counter() when its answer was known


class _Stream:
    """One InferStream: requests through a queue, answers read on a thread and time-stamped."""

    def __init__(self, runner: DeviceRunner):
        self.requests: queue.Queue = queue.Queue()
        self.answers: queue.Queue = queue.Queue()    # (InferResponse | RpcError | _END, arrival perf_counter)
        self.unanswered: collections.deque[_Frame] = collections.deque()
        self.call = runner.client.infer_stream(iter(self.requests.get, None))
        self._reader = threading.Thread(target=self._read, name="coinfer-stream-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.answers.put((resp, time.perf_counter()))
            self.answers.put((_END, time.perf_counter()))
        except grpc.RpcError as e:
            self.answers.put((e, time.perf_counter()))

    @property
    def ended(self) -> bool:
        return not self._reader.is_alive()

    def send(self, f: _Frame) -> None:
        f.alone = not self.unanswered
        f.sent_at = time.perf_counter()
        self.unanswered.append(f)
        self.requests.put(f.req)

    def close(self, cancel: bool = False) -> None:
        self.requests.put(None)            # half-close: the cloud ends the stream after its last answer
        if cancel:
            self.call.cancel()


class StreamBroken(Exception):
    """The stream failed with a fallback status, or its oldest frame passed its deadline."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Pipeline:
    """Up to `depth` frames between submission and delivery; see the module docstring."""

    def __init__(self, runner: DeviceRunner, depth: int, timeout_s: float, lossless: bool = False):
        if depth < 1:
            raise ValueError(f"expected --pipeline-depth >= 1, got {depth}")
        self.runner, self.depth, self.timeout_s, self.lossless = runner, depth, timeout_s, lossless
        self.pending: collections.deque[_Frame] = collections.deque()   # submitted, not delivered
        self._stream: _Stream | None = None
        self._last_ready = 0.0
        self.broken = 0          # streams that ended in a fail-over
        # called with (request, response, round trip s or None when it queued behind other frames,
        # encode s, the frame's tag) for every frame the cloud answered
        self.on_answer: Callable[[pb.InferRequest, pb.InferResponse, float | None, float, Any], None] | None = None

    @property
    def in_flight(self) -> int:
        """Frames submitted and not yet delivered."""
        return len(self.pending)

    # -- submission ---------------------------------------------------------------------------
    def submit(self, scheme: Scheme, image: np.ndarray, label: int | None = None,
               tag: Any = None) -> list[tuple[FrameResult, Any]]:
        """Start one frame under `scheme`; returns the frames now answered, in order (waiting
        first while `depth` frames are pending)."""
        out = self.poll()
        while len(self.pending) >= self.depth:
            self._wait_one()
            out += self._deliverable()
        f = _Frame(image, label, scheme, tag, time.perf_counter())
        f.req, logits, f.head_s, f.encode_s = self.runner.prepare(scheme, image, self.lossless)
        self.pending.append(f)
        if f.req is None:
            self._finish_local(f, str(scheme), logits, None)
        else:
            if self.runner.client is None:
                raise ValueError(f"scheme {scheme} needs a cloud (--cloud HOST:PORT)")
            if self._stream is not None and not self._stream.unanswered and self._stream.ended:
                self._stream.close()           # ended while idle (the cloud's idle limit, a restart)
                self._stream = None
            if self._stream is None:
                self._stream = _Stream(self.runner)
            self._stream.send(f)
        return out + self.poll()

    def poll(self) -> list[tuple[FrameResult, Any]]:
        """Take the answers that have arrived, without waiting; the frames now deliverable."""
        while self._stream is not None and self._stream.unanswered:
            try:
                item = self._stream.answers.get_nowait()
            except queue.Empty:
                break
            self._take(*item)
        return self._deliverable()

    def drain(self) -> list[tuple[FrameResult, Any]]:
        """Wait for every pending frame; all of them, in order."""
        out = self.poll()
        while self.pending:
            self._wait_one()
            out += self._deliverable()
        return out

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close(cancel=bool(self._stream.unanswered))
            self._stream = None

    # -- answers ------------------------------------------------------------------------------
    def _wait_one(self) -> None:
        """Wait for the oldest unanswered frame's answer, or its deadline."""
        s = self._stream
        assert s is not None and s.unanswered, "a pending frame that nobody answers"
        left = s.unanswered[0].sent_at + self.timeout_s - time.perf_counter()
        try:
            item = s.answers.get(timeout=max(0.0, left))
        except queue.Empty:
            self._fail_over(StreamBroken(grpc.StatusCode.DEADLINE_EXCEEDED,
                                         f"no answer within {self.timeout_s:g} s on the stream"))
            return
        self._take(*item)

    def _take(self, item, arrived: float) -> None:
        s = self._stream
        assert s is not None
        if isinstance(item, pb.InferResponse):
            f = s.unanswered.popleft()
            if item.request_id != f.req.request_id:     # the cloud answers a stream's frames in order
                raise RuntimeError(f"expected the answer to {f.req.request_id}, got {item.request_id}")
            self._finish_remote(f, item, arrived)
            return
        if isinstance(item, grpc.RpcError) and item.code() not in FALLBACK_CODES:
            self.close()
            raise item
        if item is _END:
            broken = StreamBroken(grpc.StatusCode.UNAVAILABLE, "the cloud ended the stream early")
        else:
            broken = StreamBroken(item.code(), item.details() or "")
        self._fail_over(broken)

    def _fail_over(self, broken: StreamBroken) -> None:
        """Every frame in flight on the broken stream runs device-only, keeping its request id."""
        s, self._stream = self._stream, None
        assert s is not None
        s.close(cancel=True)
        self.broken += 1
        log.warning("stream broken (%s): %d frames in flight run device-only", broken, len(s.unanswered))
        for f in s.unanswered:
            _, logits, f.head_s, _ = self.runner.prepare(DEVICE_ONLY, f.image)   # as a unary fallback
            self._finish_local(f, str(DEVICE_ONLY), logits, str(broken), f.req.request_id)

    def _finish_local(self, f: _Frame, scheme: str, logits: np.ndarray, fallback: str | None,
                      request_id: str | None = None) -> None:
        f.ready_at = time.perf_counter()
        f.result = FrameResult(request_id or self.runner.new_request_id(), scheme, int(np.argmax(logits)),
                               f.label, f.head_s, 0.0 if fallback else f.encode_s, 0, 0.0, 0.0, 0.0,
                               f.ready_at - f.t0, fallback)

    def _finish_remote(self, f: _Frame, resp: pb.InferResponse, arrived: float) -> None:
        rtt = arrived - f.sent_at           # queueing behind earlier frames included unless `alone`
        if self.on_answer is not None:
            self.on_answer(f.req, resp, rtt if f.alone else None, f.encode_s, f.tag)
        f.ready_at = arrived
        f.result = FrameResult(f.req.request_id, str(f.scheme), int(resp.top1), f.label, f.head_s, f.encode_s,
                               f.req.ByteSize(), rtt, resp.decode_s, resp.tail_s, arrived - f.t0,
                               tail=self.runner.tail_of(f.req, resp))

    def _deliverable(self) -> list[tuple[FrameResult, Any]]:
        """Pop the answered frames at the front; a frame is ready no earlier than the one before."""
        out = []
        while self.pending and self.pending[0].result is not None:
            f = self.pending.popleft()
            ready = max(f.ready_at, self._last_ready)
            self._last_ready = ready
            out.append((replace(f.result, total_s=ready - f.t0), f.tag))
        return out


def run_all(pipe: Pipeline, scheme: Scheme, frames) -> Iterator[tuple[FrameResult, Any]]:
    """Every (image, label) of `frames` under one scheme, answers yielded in frame order."""
    try:
        for image, label in frames:
            yield from pipe.submit(scheme, image, label)
        yield from pipe.drain()
    finally:
        pipe.close()
