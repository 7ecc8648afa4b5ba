"""Build, start and run the cloud daemon."""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud.engine import Engine, ServedModel
from cloud.security import TokenInterceptor, server_credentials
from common.credentials import SecurityConfigError, read_token
from common.limits import MAX_MESSAGE_BYTES
from cloud.servicer import CoInferServicer
from planner.bank import LoadedBank, load_bank, shipped_bank_dir
from planner.models import build_model, default_weights_path, file_sha256
from protos.coinfer.v1 import coinfer_pb2 as pb
from protos.coinfer.v1 import coinfer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CoInfer"].full_name  # "coinfer.v1.CoInfer"
# Large enough for the lossless float32 path of vgg16_bn at 224x224 (partition 0:
# 64 x 224 x 224 x 4 B = 12.8 MB) with headroom; anything larger is RESOURCE_EXHAUSTED.


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0                        # 0 picks a free port
    model: str = "fmnist-vgg"
    weights: str | None = None           # state dict; None = the model's shipped default
    num_classes: int | None = None       # classifier width when weights have another head
    artifacts: tuple[str, ...] = ()      # fine-tuned scheme artifacts to serve
    banks: tuple[str, ...] | None = None  # bank directories to serve; None = the model's shipped bank, if any
    input_hw: tuple[int, int] | None = None  # image size (H, W); None = the model's default
    max_workers: int = 8                 # RPC handler threads
    max_concurrent_rpcs: int = 64        # beyond this, RESOURCE_EXHAUSTED
    max_message_bytes: int = MAX_MESSAGE_BYTES
    profile_repeats: int = 3             # tail timing repeats at start-up; 0 skips (reports 0)
    grace_s: float = 5.0                 # drain time on SIGTERM, seconds
    torch_threads: int | None = None     # intra-op threads for torch; None = torch default
    max_inflight_bytes: int = 1 << 30    # memory reserved by calls in progress; beyond, RESOURCE_EXHAUSTED
    tls_cert: str | None = None          # PEM server certificate (chain); with tls_key enables TLS
    tls_key: str | None = None           # PEM private key of tls_cert
    tls_client_ca: str | None = None     # PEM CA that client certificates must chain to (mTLS)
    token_file: str | None = None        # file holding the bearer token every call must carry


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


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
    server: grpc.Server
    port: int
    servicer: CoInferServicer
    health: health.HealthServicer

    def drain_and_stop(self, grace_s: float) -> None:
        """Health NOT_SERVING, new work UNAVAILABLE, in-flight calls finish, then stop."""
        t0 = time.monotonic()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.servicer.draining.set()
        self.servicer.engine.budget.wait_idle(grace_s)
        self.server.stop(max(0.0, grace_s - (time.monotonic() - t0))).wait()


def check_security(cfg: ServerConfig) -> None:
    """Refuse half-configured TLS; warn when serving beyond loopback in the clear."""
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise SecurityConfigError("--tls-cert and --tls-key must be given together")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    if not cfg.tls_cert and not is_loopback(cfg.host):
        log.warning("serving on %s without TLS: feature maps, answers and any bearer token travel "
                    "in the clear and can be read or altered on the network; use --tls-cert/--tls-key",
                    cfg.host)


def start_server(cfg: ServerConfig, engine: Engine) -> RunningServer:
    check_security(cfg)
    interceptors = [TokenInterceptor(read_token(cfg.token_file))] if cfg.token_file else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="coinfer-rpc"),
        interceptors=interceptors,
        options=channel_options(cfg.max_message_bytes),
        maximum_concurrent_rpcs=cfg.max_concurrent_rpcs)
    servicer = CoInferServicer(engine)
    pb_grpc.add_CoInferServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
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
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, servicer, health_servicer)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(cfg: ServerConfig) -> int:
    """Load, serve until SIGTERM/SIGINT, drain, exit 0."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    check_security(cfg)
    engine = Engine([load_served_model(cfg)], cfg.max_message_bytes, cfg.max_inflight_bytes)
    running = start_server(cfg, engine)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"listening on {host}:{running.port}", flush=True)
    stop.wait()
    log.info("signal received; draining for up to %.1f s", cfg.grace_s)
    running.drain_and_stop(cfg.grace_s)
    return 0
