"""gRPC adapter: decode the message, call the engine, encode the reply, map failures."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator, TypeVar

import grpc

from cloud.engine import Engine, probe
from cloud.errors import ShuttingDownError, status_for
from protos.coinfer.v1 import coinfer_pb2 as pb
from protos.coinfer.v1 import coinfer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


class CoInferServicer(pb_grpc.CoInferServicer):
    def __init__(self, engine: Engine):
        self.engine = engine
        self.draining = threading.Event()   # set on SIGTERM: new work gets UNAVAILABLE

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        """Run `fn`; a known failure aborts the RPC with its status, the server keeps serving."""
        try:
            if self.draining.is_set():
                raise ShuttingDownError("server is shutting down; retry on another replica or later")
            return fn()
        except Exception as e:  # noqa: BLE001 - mapped below, re-raised when unknown
            code = status_for(e)
            if code is None:
                log.exception("internal error")
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}")
            context.abort(code, str(e))

    def GetServerInfo(self, request, context):
        return self._call(context, self.engine.server_info)

    def _handle(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        return self._call(context, lambda: self.engine.handle(
            request, request.ByteSize(), context.time_remaining()))

    def Infer(self, request, context):
        return self._handle(request, context)

    def InferStream(self, request_iterator, context) -> Iterator[pb.InferResponse]:
        for request in request_iterator:
            yield self._handle(request, context)

    def Probe(self, request, context):
        receive_ns = time.time_ns()
        return self._call(context, lambda: probe(request, receive_ns))
