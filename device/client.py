"""The device's gRPC channel to the cloud: thin calls with explicit limits and deadlines."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import grpc

from common.credentials import SecurityConfigError, read_pem, read_token
from common.limits import MAX_MESSAGE_BYTES
from protos.coinfer.v1 import coinfer_pb2 as pb
from protos.coinfer.v1 import coinfer_pb2_grpc as pb_grpc



# gRPC retries UNAVAILABLE itself (exponential backoff with jitter); what still fails
# after that falls back to device-only in device.runner.
RETRY_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "coinfer.v1.CoInfer"}],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "0.4s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})


@dataclass(frozen=True)
class ClientConfig:
    target: str                          # HOST:PORT of coinfer-cloud
    timeout_s: float = 30.0              # deadline per unary call, seconds
    max_message_bytes: int = MAX_MESSAGE_BYTES   # the cloud's limit too
    tls_ca: str | None = None            # PEM CA that the server certificate must chain to; enables TLS
    tls_cert: str | None = None          # PEM client certificate for mutual TLS
    tls_key: str | None = None           # PEM private key of tls_cert
    token_file: str | None = None        # file holding the bearer token sent with every call
    reconnect_backoff_max_s: float = 2.0  # cap on reconnect backoff, so a restarted cloud is found soon


@dataclass(frozen=True)
class ProbeResult:
    up_bytes: int            # payload bytes sent
    down_bytes: int          # payload bytes received
    rtt_s: float             # client-measured round trip, seconds
    server_s: float          # server time between receipt and answer, seconds


class CloudClient:
    def __init__(self, cfg: ClientConfig):
        self.cfg = cfg
        backoff_ms = int(cfg.reconnect_backoff_max_s * 1000)
        opts = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.enable_retries", 1), ("grpc.service_config", RETRY_SERVICE_CONFIG),
                ("grpc.initial_reconnect_backoff_ms", min(200, backoff_ms)),
                ("grpc.min_reconnect_backoff_ms", min(200, backoff_ms)),
                ("grpc.max_reconnect_backoff_ms", backoff_ms)]
        self.metadata = (("authorization", f"Bearer {read_token(cfg.token_file)}"),) if cfg.token_file else ()
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            raise SecurityConfigError("--tls-cert and --tls-key must be given together")
        if cfg.tls_cert and not cfg.tls_ca:
            raise SecurityConfigError("--tls-cert needs --tls-ca (client certificates travel only over TLS)")
        if cfg.tls_ca:
            creds = grpc.ssl_channel_credentials(
                root_certificates=read_pem(cfg.tls_ca, "TLS CA"),
                private_key=read_pem(cfg.tls_key, "TLS key") if cfg.tls_key else None,
                certificate_chain=read_pem(cfg.tls_cert, "TLS certificate") if cfg.tls_cert else None)
            self.channel = grpc.secure_channel(cfg.target, creds, options=opts)
        else:
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
        return self.stub.GetServerInfo(pb.ServerInfoRequest(), timeout=self.cfg.timeout_s,
                                       metadata=self.metadata)

    def infer(self, request: pb.InferRequest) -> tuple[pb.InferResponse, float]:
        """One frame; returns the answer and the round trip in seconds."""
        t0 = time.perf_counter()
        response = self.stub.Infer(request, timeout=self.cfg.timeout_s, metadata=self.metadata)
        return response, time.perf_counter() - t0

    def infer_stream(self, requests: Iterable[pb.InferRequest],
                     timeout_s: float | None = None) -> Iterator[pb.InferResponse]:
        """Pipelined frames; answers carry their frame's request_id."""
        return self.stub.InferStream(iter(requests), timeout=timeout_s, metadata=self.metadata)

    def probe(self, up_bytes: int, down_bytes: int) -> ProbeResult:
        request = pb.ProbeRequest(payload=bytes(up_bytes), response_bytes=down_bytes)
        t0 = time.perf_counter()
        response = self.stub.Probe(request, timeout=self.cfg.timeout_s, metadata=self.metadata)
        rtt = time.perf_counter() - t0
        server_s = max(0, response.server_send_ns - response.server_receive_ns) / 1e9
        return ProbeResult(up_bytes, len(response.payload), rtt, server_s)
