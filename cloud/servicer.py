"""gRPC adapter (grpc.aio): decode the message, call the engine, encode the reply, map failures.

Calls wait on the event loop; only the engine's work runs on the `pool` threads, so an open
stream waiting for its next frame holds no thread, and health checks (served on the loop)
always answer. Every call and stream frame is counted, timed, and traced when refused.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import AsyncIterator, Callable, TypeVar

import grpc

from cloud.engine import Engine, probe
from common.limits import WEIGHTS_METADATA_KEY
from cloud.errors import OverloadedError, ShuttingDownError, StreamIdleError, detail_for, status_for
from cloud.limits import Slots
from cloud.metrics import CloudMetrics
from cloud.trace import RefusalTrace
from protos.coinfer.v1 import coinfer_pb2 as pb
from protos.coinfer.v1 import coinfer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


def caller_of(context) -> str:
    """Who is calling, for the answer cache: the client certificate's name under mutual TLS,
    else the peer's address without its port."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or auth.get("x509_subject_alternative_name")
    if names:
        return "cert:" + names[0].decode(errors="replace")
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0]


def device_weights_of(context) -> str:
    """The sha256 of the device's head weights, when its call says (common.limits)."""
    for key, value in context.invocation_metadata() or ():
        if key == WEIGHTS_METADATA_KEY:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


class CoInferServicer(pb_grpc.CoInferServicer):
    def __init__(self, engine: Engine, pool, max_concurrent_rpcs: int = 64, max_streams: int = 1024,
                 stream_idle_s: float = 300.0, trace: RefusalTrace | None = None):
        self.engine = engine
        self.pool = pool                            # threads that run the engine's work
        self.calls = Slots(max_concurrent_rpcs, "concurrent calls")   # unary calls and stream frames
        self.streams = Slots(max_streams, "open streams")
        self.stream_idle_s = stream_idle_s          # a stream with no frame for this long is ended
        self.trace = trace or RefusalTrace()
        self.metrics = CloudMetrics(engine, lambda: self.streams.held, lambda: self.trace.suppressed_total)
        self.draining = threading.Event()           # set on SIGTERM: new work gets UNAVAILABLE

    async def _refuse(self, context, method: str, request_id: str, exc: Exception) -> None:
        code = status_for(exc) or grpc.StatusCode.INTERNAL
        if code == grpc.StatusCode.INTERNAL:
            log.debug("internal error in %s", method, exc_info=exc)     # the traceback, with -v
        detail = detail_for(exc) if code != grpc.StatusCode.INTERNAL else f"internal error: {type(exc).__name__}"
        self.trace.record(code, context.peer() or "", method, request_id,
                          detail if code != grpc.StatusCode.INTERNAL else f"{type(exc).__name__}: {exc}")
        await context.abort(code, detail)

    async def _call(self, context, method: str, fn: Callable[[float | None], T],
                    request_id: str = "", received_bytes: int = 0) -> T:
        """Run `fn(seconds left)` on the pool; a known failure aborts the call with its status."""
        t0 = time.perf_counter()
        left = context.time_remaining()
        deadline = None if left is None else time.monotonic() + left
        code, answer = "OK", None
        try:
            if self.draining.is_set():
                raise ShuttingDownError("server is shutting down; retry on another replica or later")
            with self.calls.take():
                answer = await asyncio.get_running_loop().run_in_executor(
                    self.pool, lambda: fn(None if deadline is None else deadline - time.monotonic()))
            return answer
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as e:  # noqa: BLE001 - every failure gets a status; unknown ones INTERNAL
            code = (status_for(e) or grpc.StatusCode.INTERNAL).name
            await self._refuse(context, method, request_id, e)
        finally:
            self.metrics.observe(method, code, time.perf_counter() - t0, received_bytes,
                                 answer if isinstance(answer, pb.InferResponse) else None)

    async def GetServerInfo(self, request, context):
        return await self._call(context, "GetServerInfo", lambda _: self.engine.server_info())

    def _infer(self, request: pb.InferRequest, context, method: str, caller: str, weights: str):
        return self._call(context, method,
                          lambda left: self.engine.handle(request, request.ByteSize(), left, caller, weights),
                          request.request_id, request.ByteSize())

    async def Infer(self, request, context):
        return await self._infer(request, context, "Infer", caller_of(context), device_weights_of(context))

    async def InferStream(self, request_iterator, context) -> AsyncIterator[pb.InferResponse]:
        """Frames are answered one at a time, in order; waiting for a frame holds no thread."""
        try:
            self.streams.acquire()
        except OverloadedError as e:
            self.metrics.observe("InferStream", status_for(e).name, 0.0)
            await self._refuse(context, "InferStream", "", e)
        try:
            caller, weights, frames = caller_of(context), device_weights_of(context), request_iterator.__aiter__()
            while True:
                try:
                    async with asyncio.timeout(self.stream_idle_s):
                        request = await frames.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    e = StreamIdleError(f"stream sent no frame for {self.stream_idle_s:g} s; open a new one")
                    self.metrics.observe("InferStream", status_for(e).name, 0.0)
                    await self._refuse(context, "InferStream", "", e)
                yield await self._infer(request, context, "InferStream", caller, weights)
        finally:
            self.streams.release()

    async def Probe(self, request, context):
        receive_ns = time.time_ns()
        return await self._call(context, "Probe", lambda _: probe(request, receive_ns),
                                received_bytes=request.ByteSize())
