"""Build, start and run the cloud daemon (a grpc.aio server; the engine's work on a thread pool)."""
from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import enum
import logging
import signal
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Callable

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud.engine import Engine, LocalTails, ServedModel, TailRunner
from cloud.errors import EngineUnavailableError
from cloud.security import TokenInterceptor, refusal_reporter, server_credentials
from cloud.servicer import CoInferServicer
from common.credentials import SecurityConfigError, is_loopback, read_token
from common.limits import MAX_MESSAGE_BYTES
from planner.bank import LoadedBank, load_bank, shipped_bank_dir
from planner.models import build_model, default_weights_path, file_sha256
from protos.coinfer.v1 import coinfer_pb2 as pb
from protos.coinfer.v1 import coinfer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CoInfer"].full_name  # "coinfer.v1.CoInfer"
# Large enough for the lossless float32 path of vgg16_bn at 224x224 (partition 0:
# 64 x 224 x 224 x 4 B = 12.8 MB) with headroom; anything larger is RESOURCE_EXHAUSTED.


class EngineKind(enum.Enum):
    """Where decode and tails run: in the daemon, or in a Ray Serve deployment behind it."""
    PLAIN = "plain"
    RAY = "ray"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051                    # 0 picks a free port
    model: str = "fmnist-vgg"
    weights: str | None = None           # state dict; None = the model's shipped default
    num_classes: int | None = None       # classifier width when weights have another head
    artifacts: tuple[str, ...] = ()      # fine-tuned scheme artifacts to serve
    banks: tuple[str, ...] | None = None  # bank directories to serve; None = the model's shipped bank, if any
    input_hw: tuple[int, int] | None = None  # image size (H, W); None = the model's default
    max_workers: int = 8                 # threads running decode + tail; waiting calls hold none
    max_concurrent_rpcs: int = 64        # calls and stream frames in progress; beyond, RESOURCE_EXHAUSTED
    max_streams: int = 1024              # open InferStreams; beyond, RESOURCE_EXHAUSTED
    stream_idle_s: float = 300.0         # an InferStream without a frame this long ends (DEADLINE_EXCEEDED)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    profile_repeats: int = 3             # tail timing repeats at start-up; 0 skips (reports 0)
    grace_s: float = 5.0                 # drain time on SIGTERM, seconds
    torch_threads: int | None = None     # intra-op threads for torch; None = torch default
    max_inflight_bytes: int = 1 << 30    # memory reserved by calls in progress and the answer cache
    tls_cert: str | None = None          # PEM server certificate (chain); with tls_key enables TLS
    tls_key: str | None = None           # PEM private key of tls_cert
    tls_client_ca: str | None = None     # PEM CA that client certificates must chain to (mTLS)
    token_file: str | None = None        # file holding the bearer token every call must carry
    metrics_port: int | None = None      # Prometheus /metrics on host:port; None = off, 0 = any free port
    keepalive_time_s: float = 60.0       # ping a connection idle this long (calls or not), seconds
    keepalive_timeout_s: float = 20.0    # close it when the ping is not answered within this, seconds
    max_connection_idle_s: float = 300.0  # GOAWAY to a connection without calls for this long, seconds
    max_connection_age_s: float = 3600.0  # GOAWAY to any connection this old, seconds (clients reconnect)
    max_connection_age_grace_s: float = 300.0  # then calls still open get this long before they end
    engine: EngineKind = EngineKind.PLAIN  # RAY: decode and tails in Ray Serve replicas (cloud.ray_engine)
    replicas: int = 2                    # Ray Serve replicas of the tails (engine RAY)
    ray_address: str | None = None       # Ray cluster to join; None = start a local Ray instance
    batch_max_size: int = 8              # most requests one replica runs as one batch; 1 = no batching
    batch_wait_s: float = 0.002          # how long a replica waits to fill a batch, seconds
    replica_resources: tuple[tuple[str, float], ...] = ()  # Ray custom resources each replica requires
    redispatch_tries: int = 3            # tries of a request whose replica dies mid-request, then UNAVAILABLE
    replica_timeout_s: float = 5.0       # a try without an answer this long is sent again (a lost node), seconds


# Calls beyond the bounds above that grpc itself refuses: health checks and refusals
# must still get through when every stream and call slot is taken.
RESERVED_RPCS = 64


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


def server_options(cfg: ServerConfig) -> list[tuple[str, int]]:
    """Message limits and connection management: keepalive pings find half-open connections
    (a device that vanished), idle and aged connections are closed with GOAWAY, a peer that
    never finishes its handshake is dropped. Devices ping at most every 20 s (device.client)."""
    ms = lambda s: int(s * 1000)  # noqa: E731
    return channel_options(cfg.max_message_bytes) + [
        ("grpc.keepalive_time_ms", ms(cfg.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(cfg.keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),   # accept client pings every 10 s
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", ms(cfg.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", ms(cfg.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(cfg.max_connection_age_grace_s)),
        ("grpc.server_handshake_timeout_ms", 20_000),
    ]


def load_served_model(cfg: ServerConfig) -> ServedModel:
    model = build_model(cfg.model, num_classes=cfg.num_classes, weights=cfg.weights)
    weights = cfg.weights or default_weights_path(model.spec)
    served = ServedModel(name=cfg.model, model=model, input_hw=cfg.input_hw or model.spec.input_hw,
                         weights_sha256=file_sha256(weights) if weights else "")
    served.bank = load_banks(cfg, served)
    if cfg.artifacts:
        from planner.artifact import load_artifact
        for path in cfg.artifacts:
            art = load_artifact(path)
            if art.model.spec.name != cfg.model:
                raise ValueError(f"artifact {path} is for {art.model.spec.name}, not {cfg.model}")
            served.artifacts[art.sha256] = art
    served.measure(cfg.profile_repeats)
    return served


def load_banks(cfg: ServerConfig, served: ServedModel) -> LoadedBank | None:
    """The banks to serve, merged (a later directory's scheme wins); each must be built from
    the served weights (BankWeightsMismatch names both sha256s otherwise)."""
    dirs = cfg.banks
    if dirs is None:   # the shipped bank goes with the shipped weights only
        shipped = shipped_bank_dir(cfg.model)
        if shipped is None or cfg.weights is not None or cfg.num_classes is not None:
            return None
        dirs = (str(shipped),)
    merged: LoadedBank | None = None
    for d in dirs:
        bank = load_bank(d, served.model, cfg.model, served.weights_sha256)
        if merged is None:
            merged = bank
        else:
            merged.tails.update(bank.tails)
            keep = [e for e in merged.manifest.schemes if e.scheme not in bank.tails]
            merged.manifest = dataclasses.replace(merged.manifest, schemes=tuple(keep) + bank.manifest.schemes)
    if merged is not None:
        log.info("bank: %d fine-tuned tails for %s from %s", len(merged), cfg.model, ", ".join(dirs))
    return merged


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    servicer: CoInferServicer
    health: health.aio.HealthServicer
    pool: futures.ThreadPoolExecutor
    metrics_port: int | None = None
    metrics_httpd: object | None = None

    async def drain_and_stop(self, grace_s: float) -> None:
        """Health NOT_SERVING, new work UNAVAILABLE, in-flight calls finish, then stop."""
        t0 = time.monotonic()
        await self.health.enter_graceful_shutdown()
        self.servicer.draining.set()
        await asyncio.to_thread(self.servicer.engine.budget.wait_idle, grace_s)
        await self.server.stop(max(0.0, grace_s - (time.monotonic() - t0)))
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.metrics_httpd is not None:
            self.metrics_httpd.shutdown()


def validate_security(cfg: ServerConfig) -> None:
    """Refuse half-configured TLS."""
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise SecurityConfigError("--tls-cert and --tls-key must be given together")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")


def check_security(cfg: ServerConfig) -> None:
    """Refuse half-configured TLS; warn (once per start) when serving beyond loopback in the clear."""
    validate_security(cfg)
    if not cfg.tls_cert and not is_loopback(cfg.host):
        log.warning("serving on %s without TLS: feature maps, answers and any bearer token travel "
                    "in the clear and can be read or altered on the network; use --tls-cert/--tls-key",
                    cfg.host)


async def start_server(cfg: ServerConfig, engine: Engine) -> RunningServer:
    """Build and start the server on the running event loop; the warning about plaintext is
    given here, once."""
    check_security(cfg)
    pool = futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="coinfer-rpc")
    servicer = CoInferServicer(engine, pool, cfg.max_concurrent_rpcs, cfg.max_streams, cfg.stream_idle_s)
    interceptors = [TokenInterceptor(read_token(cfg.token_file), refusal_reporter(servicer.trace, servicer.metrics))
                    ] if cfg.token_file else []
    server = grpc.aio.server(interceptors=interceptors, options=server_options(cfg),
                             maximum_concurrent_rpcs=cfg.max_streams + cfg.max_concurrent_rpcs + RESERVED_RPCS)
    pb_grpc.add_CoInferServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = f"{cfg.host}:{cfg.port}"
    if cfg.tls_cert:
        port = server.add_secure_port(
            address, server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {cfg.host}:{cfg.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = RunningServer(server, port, servicer, health_servicer, pool)
    if cfg.metrics_port is not None:
        running.metrics_httpd, running.metrics_port = servicer.metrics.serve(cfg.host, cfg.metrics_port)
    return running


def return_large_buffers_to_the_os(threshold_bytes: int = 1 << 20) -> None:
    """glibc raises its mmap threshold after each large free (up to 32 MiB), so buffers of
    request size then stay in the heap after the request is gone: RSS ratchets up with every
    large message. A fixed threshold keeps large buffers mmapped and returned when freed."""
    M_MMAP_THRESHOLD = -3
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold_bytes)
    except (OSError, AttributeError):      # not glibc: nothing to tune
        pass


def serve(cfg: ServerConfig) -> int:
    """Load, serve until SIGTERM/SIGINT, drain, exit 0."""
    return_large_buffers_to_the_os()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    validate_security(cfg)
    start_runner = tail_runner_factory(cfg)       # refuses --engine ray without Ray before loading
    served = load_served_model(cfg)
    runner = start_runner(cfg, {served.name: served})
    try:
        engine = Engine([served], cfg.max_message_bytes, cfg.max_inflight_bytes, runner=runner)
        return asyncio.run(_serve(cfg, engine))
    finally:
        runner.close()


def tail_runner_factory(cfg: ServerConfig) -> Callable[[ServerConfig, dict[str, ServedModel]], TailRunner]:
    """What starts the compute step for `cfg.engine` (ValueError with the install hint when the
    engine's packages are missing)."""
    if cfg.engine is EngineKind.PLAIN:
        return lambda _cfg, models: LocalTails(models)
    try:
        from cloud.ray_engine import RayTails
    except ImportError as e:
        if (e.name or "").split(".")[0] != "ray":
            raise
        raise EngineUnavailableError("--engine ray needs Ray Serve, which is not installed here: "
                                     "pip install 'opt-coinfer[ray]'") from None
    return lambda cfg, _models: RayTails(cfg)


async def _serve(cfg: ServerConfig, engine: Engine) -> int:
    running = await start_server(cfg, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"listening on {host}:{running.port}", flush=True)
    if running.metrics_port is not None:
        log.info("metrics on http://%s:%d/metrics", host, running.metrics_port)
    await stop.wait()
    log.info("signal received; draining for up to %.1f s", cfg.grace_s)
    await running.drain_and_stop(cfg.grace_s)
    return 0
