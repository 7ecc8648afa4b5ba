"""The device's gRPC channel to the cloud: thin calls with explicit limits and deadlines."""
from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import grpc

from common.credentials import SecurityConfigError, is_loopback, read_pem, read_token, split_host_port
from common.limits import MAX_MESSAGE_BYTES, WEIGHTS_METADATA_KEY
from protos.coinfer.v1 import coinfer_pb2 as pb
from protos.coinfer.v1 import coinfer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

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
    weights_sha256: str = ""             # of the device's head weights, sent with every call ("": not sent)


SMALL_CALL_BYTES = 8192   # probes up to this many bytes each way price a frame's call CPU

# Keepalive pings every 20 s, calls or not (the cloud accepts one per 10 s): a connection
# that died without a FIN (NAT timeout, unplugged link) is found and replaced.
KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000),
                     ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]

# HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


class TLSSetupError(SecurityConfigError):
    """The cloud answers, but the TLS handshake or its credentials fail: not an outage."""


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
                ("grpc.max_reconnect_backoff_ms", backoff_ms), *KEEPALIVE_OPTIONS]
        # device CPU seconds of one call (serialization, gRPC's threads), EWMA over unary frames and
        # small probes: what a call costs a CPU-quota'd device (planner.profile.DeviceCpu)
        self.call_cpu_s: float | None = None
        self.metadata = (("authorization", f"Bearer {read_token(cfg.token_file)}"),) if cfg.token_file else ()
        if cfg.weights_sha256:
            self.metadata += ((WEIGHTS_METADATA_KEY, cfg.weights_sha256),)
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            raise SecurityConfigError("--tls-cert and --tls-key must be given together")
        if cfg.tls_cert and not cfg.tls_ca:
            raise SecurityConfigError("--tls-cert needs --tls-ca (client certificates travel only over TLS)")
        address = split_host_port(cfg.target)
        if cfg.token_file and not cfg.tls_ca and not (address and is_loopback(address[0])):
            log.warning("sending the bearer token to %s without TLS: anyone on the network can read "
                        "it and call the cloud as this device; use --tls-ca", cfg.target)
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

    def check_tls(self, timeout_s: float = 5.0) -> None:
        """Before any frame: raise TLSSetupError when the cloud is reachable but TLS cannot work
        (a CA that did not sign its certificate, a client certificate it refuses or that is
        missing, TLS on one end only). A cloud that does not answer at all is an outage, left to
        fail-over: this returns. gRPC reports both as UNAVAILABLE, so this asks directly."""
        address = split_host_port(self.cfg.target)
        if address is None:
            return
        host, port = address
        try:
            raw = socket.create_connection((host, port), timeout=timeout_s)
        except OSError:
            return                                              # down or unreachable: fail-over
        with raw:
            if self.cfg.tls_ca:
                _check_tls_server(raw, host, self.cfg, timeout_s)
            elif _speaks_tls(raw, host, timeout_s):
                raise TLSSetupError(f"TLS: the cloud at {self.cfg.target} speaks TLS but this device was "
                                    f"started without it; give --tls-ca (and --tls-cert/--tls-key for "
                                    f"mutual TLS)")

    def wait_ready(self, timeout_s: float) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def server_info(self) -> pb.ServerInfo:
        return self.stub.GetServerInfo(pb.ServerInfoRequest(), timeout=self.cfg.timeout_s,
                                       metadata=self.metadata)

    def _observe_cpu(self, cpu_s: float) -> None:
        self.call_cpu_s = cpu_s if self.call_cpu_s is None else 0.8 * self.call_cpu_s + 0.2 * cpu_s

    def infer(self, request: pb.InferRequest) -> tuple[pb.InferResponse, float]:
        """One frame; returns the answer and the round trip in seconds."""
        c0, t0 = time.process_time(), time.perf_counter()
        response = self.stub.Infer(request, timeout=self.cfg.timeout_s, metadata=self.metadata)
        rtt = time.perf_counter() - t0
        self._observe_cpu(time.process_time() - c0)
        return response, rtt

    def infer_stream(self, requests: Iterable[pb.InferRequest],
                     timeout_s: float | None = None) -> Iterator[pb.InferResponse]:
        """Pipelined frames; answers carry their frame's request_id."""
        return self.stub.InferStream(iter(requests), timeout=timeout_s, metadata=self.metadata)

    def probe(self, up_bytes: int, down_bytes: int) -> ProbeResult:
        request = pb.ProbeRequest(payload=bytes(up_bytes), response_bytes=down_bytes)
        c0, t0 = time.process_time(), time.perf_counter()
        response = self.stub.Probe(request, timeout=self.cfg.timeout_s, metadata=self.metadata)
        rtt = time.perf_counter() - t0
        if up_bytes + down_bytes <= SMALL_CALL_BYTES:     # a frame-sized call: its CPU prices a frame's
            self._observe_cpu(time.process_time() - c0)
        server_s = max(0, response.server_send_ns - response.server_receive_ns) / 1e9
        return ProbeResult(up_bytes, len(response.payload), rtt, server_s)


def _speaks_tls(raw: socket.socket, host: str, timeout_s: float) -> bool:
    """True when the server completes a TLS handshake (certificate not checked)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw.settimeout(timeout_s)
    try:
        with ctx.wrap_socket(raw, server_hostname=host or None):
            return True
    except (ssl.SSLError, OSError):
        return False


def _check_tls_server(raw: socket.socket, host: str, cfg: ClientConfig, timeout_s: float) -> None:
    """Handshake as the gRPC channel will, then send the HTTP/2 preface and wait for the server's
    first bytes: under TLS 1.3 a server refuses a client certificate only after the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=read_pem(cfg.tls_ca, "TLS CA").decode())
    if cfg.tls_cert:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    ctx.set_alpn_protocols(["h2"])
    raw.settimeout(timeout_s)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as e:
        raise TLSSetupError(f"TLS: the cloud's certificate failed verification against --tls-ca "
                            f"{cfg.tls_ca}: {e.verify_message}") from None
    except (ssl.SSLError, OSError) as e:
        raise TLSSetupError(f"TLS: no TLS handshake with the cloud at {cfg.target}; it does not speak TLS "
                            f"(drop --tls-ca, or start it with --tls-cert/--tls-key) or refused it: "
                            f"{getattr(e, 'reason', None) or e}") from None
    try:
        with tls:
            tls.sendall(_H2_PREFACE)
            if tls.recv(9):
                return
            problem = "the connection was closed after the handshake"
    except socket.timeout:
        return                                  # a slow cloud, not a refusal: gRPC will tell
    except ssl.SSLError as e:
        problem = e.reason or str(e)
    except OSError as e:
        problem = f"{type(e).__name__}: {e}"
    need = ("give --tls-cert and --tls-key" if not cfg.tls_cert
            else f"it refused --tls-cert {cfg.tls_cert} (not signed by its client CA?)")
    raise TLSSetupError(f"TLS: the cloud requires a client certificate it trusts (mutual TLS); {need} "
                        f"({problem})")
