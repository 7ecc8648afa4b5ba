"""The device's gRPC channel to the cloud: thin calls with explicit limits and deadlines."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import grpc

from protos.coinfer.v1 import coinfer_pb2 as pb
from protos.coinfer.v1 import coinfer_pb2_grpc as pb_grpc

# Must match the cloud's limit (cloud.server.DEFAULT_MAX_MESSAGE_BYTES): the lossless
# vgg16_bn partition-0 map at 224x224 is 12.8 MB.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ClientConfig:
    target: str                          # HOST:PORT of coinfer-cloud
    timeout_s: float = 30.0              # deadline per unary call, seconds
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class ProbeResult:
    up_bytes: int            # payload bytes sent
    down_bytes: int          # payload bytes received
    rtt_s: float             # client-measured round trip, seconds
    server_s: float          # server time between receipt and answer, seconds


class CloudClient:
    def __init__(self, cfg: ClientConfig):
        self.cfg = cfg
        opts = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes)]
        self.channel = grpc.insecure_channel(cfg.target, options=opts)
        self.stub = pb_grpc.CoInferStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "CloudClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout_s: float) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def server_info(self) -> pb.ServerInfo:
        return self.stub.GetServerInfo(pb.ServerInfoRequest(), timeout=self.cfg.timeout_s)

    def infer(self, request: pb.InferRequest) -> tuple[pb.InferResponse, float]:
        """One frame; returns the answer and the round trip in seconds."""
        t0 = time.perf_counter()
        response = self.stub.Infer(request, timeout=self.cfg.timeout_s)
        return response, time.perf_counter() - t0

    def infer_stream(self, requests: Iterable[pb.InferRequest],
                     timeout_s: float | None = None) -> Iterator[pb.InferResponse]:
        """Pipelined frames; answers carry their frame's request_id."""
        return self.stub.InferStream(iter(requests), timeout=timeout_s)

    def probe(self, up_bytes: int, down_bytes: int) -> ProbeResult:
        request = pb.ProbeRequest(payload=bytes(up_bytes), response_bytes=down_bytes)
        t0 = time.perf_counter()
        response = self.stub.Probe(request, timeout=self.cfg.timeout_s)
        rtt = time.perf_counter() - t0
        server_s = max(0, response.server_send_ns - response.server_receive_ns) / 1e9
        return ProbeResult(up_bytes, len(response.payload), rtt, server_s)
