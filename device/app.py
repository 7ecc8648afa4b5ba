"""One device, built from a `DeviceConfig`: model, cloud client, runner and, for `auto`, the
live session.  `device.__main__` only parses flags into the config and prints results."""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import grpc
import numpy as np

from common import codec
from device.client import ClientConfig, CloudClient
from device.heads import Heads, Runtime, default_runtime, load_heads
from device.inputs import InputError
from device.runner import FALLBACK_CODES, DeviceRunner, FrameResult
from planner.latency import Cost
from planner.registry import WeightsMismatch
from planner.requirement import RequirementKind, RequirementSpec
from planner.scheme import DEVICE_ONLY, Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb

log = logging.getLogger(__name__)


class TailChoice(enum.Enum):
    BANK = "bank"                # split frames ask for the cloud's fine-tuned tail of their scheme
    UNMODIFIED = "unmodified"    # split frames run the unmodified network's tail


@dataclass(frozen=True)
class DeviceConfig:
    """Everything a device command needs; the CLI's defaults are these."""

    cloud: str | None = None             # HOST:PORT of coinfer-cloud; None: device-only
    model: str = "fmnist-vgg"            # registry name
    weights: str | None = None           # state dict; None = the model's shipped weights
    num_classes: int | None = None       # classifier width of `weights`
    artifact: str | None = None          # fine-tuned scheme artifact (the same file as the cloud's)
    scheme: str = "device-only"          # P:C:B, device-only, cloud-only or auto
    requirement: RequirementSpec = RequirementSpec(RequirementKind.MAX_ACCURACY_LOSS, 0.01)  # auto's goal
    tail: TailChoice = TailChoice.BANK   # which tail split frames ask the cloud for
    db: str | None = None                # auto: plan over this accuracy database's rows instead of the bank
    recipe: str | None = None            # auto: plan over database rows of this recipe prefix (default ft0-:
                                         # the unmodified network); with neither, over the cloud's bank
    dataset_name: str | None = None      # dataset of the database rows (None = the model's)
    hysteresis: float = 0.25             # auto: re-plan when bandwidth leaves x(1 +- h) of the planned one
    probe_interval_s: float = 5.0        # auto: probe when no frame sampled the bandwidth for this long
    profile_out: str | None = None       # auto: write the live profile here on exit
    cpu_quota: float | None = None       # fraction of one CPU to confine the process to (root)
    zstd_level: int = codec.CodecConfig().zstd_level
    timeout_s: float = 30.0              # deadline per call, seconds
    tls_ca: str | None = None            # PEM CA of the cloud's certificate; enables TLS
    tls_cert: str | None = None          # PEM client certificate (mutual TLS)
    tls_key: str | None = None           # PEM private key of tls_cert
    token_file: str | None = None        # file with the bearer token
    threads: int = 1                     # intra-op threads of the runtime (1, as on a small device)
    lossless: bool = False               # send float32 maps (reference mode; ignores B)
    runtime: Runtime | None = None       # torch, or ONNX Runtime on an export; None: torch where installed
    export: str | None = None            # onnx: the `coinfer-plan export` directory
    pipeline_depth: int = 1              # frames in flight over one InferStream (1: one unary call a frame)
    objective: Cost = Cost.LATENCY       # auto: plan for per-frame latency or the stream's frame rate

    @property
    def auto(self) -> bool:
        return self.scheme == "auto"


def fetch_model_info(client: CloudClient, model: str) -> pb.ModelInfo | None:
    """The cloud's ModelInfo for `model`, or None when the cloud cannot be reached now."""
    try:
        info = client.server_info()
    except grpc.RpcError as e:
        if e.code() not in FALLBACK_CODES:
            raise
        log.warning("cloud unreachable (%s); running device-only until it answers", e.code().name)
        return None
    served = {m.name: m for m in info.models}
    if model not in served:
        raise InputError(f"the cloud serves {', '.join(served)}, not {model}")
    return served[model]


def check_weights(info: pb.ModelInfo | None, heads: Heads, runtime: Runtime) -> None:
    """A device whose network differs from the one the cloud's tails continue is refused,
    both sha256s named: the cloud's bank (fine-tuned behind its weights) or, for an ONNX
    export, any split at all."""
    if info is None or not info.weights_sha256 or info.weights_sha256 == heads.weights_sha256:
        return
    if runtime is Runtime.ONNX:
        raise WeightsMismatch(info.weights_sha256, heads.weights_sha256 or "(random initialisation)",
                              f"the cloud serving {info.name}", "its network",
                              f"this device's export has weights sha256 {heads.weights_sha256 or '(random)'}; "
                              "export the cloud's weights with `coinfer-plan export --weights FILE`")
    if info.bank:
        raise WeightsMismatch(info.weights_sha256, heads.weights_sha256 or "(random initialisation)",
                              f"the cloud's bank for {info.name}", "bank",
                              "rebuild the bank with `coinfer-plan bank build` from these weights, or run "
                              "both sides with the bank's weights")


@dataclass
class Device:
    """Model, client, runner and, for auto, the live session, built from a DeviceConfig."""

    cfg: DeviceConfig
    quota: object = None
    session: object = None
    client: CloudClient | None = None
    info: pb.ModelInfo | None = None
    runner: DeviceRunner = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.cfg
        if cfg.cpu_quota is not None:   # refuse before loading anything
            from device.cpu_quota import require_cpu_quota
            require_cpu_quota()
        if cfg.pipeline_depth < 1:
            raise InputError(f"expected --pipeline-depth >= 1, got {cfg.pipeline_depth}")
        self.scheme = None if cfg.auto else Scheme.parse(cfg.scheme)
        self.runtime = cfg.runtime or default_runtime()
        self.artifact = None
        if cfg.artifact:
            if self.runtime is not Runtime.TORCH:
                raise InputError("--artifact holds a torch network: it needs --runtime torch")
            from planner.artifact import load_artifact
            self.artifact = load_artifact(cfg.artifact)
        self.heads = load_heads(self.runtime, cfg.model, weights=cfg.weights, num_classes=cfg.num_classes,
                                export=cfg.export, threads=cfg.threads)
        needs_cloud = self.scheme != DEVICE_ONLY
        if needs_cloud and not cfg.cloud:
            raise InputError(f"scheme {cfg.scheme} needs --cloud HOST:PORT")
        if needs_cloud:
            self.client = CloudClient(ClientConfig(cfg.cloud, timeout_s=cfg.timeout_s, tls_ca=cfg.tls_ca,
                                                   tls_cert=cfg.tls_cert, tls_key=cfg.tls_key,
                                                   token_file=cfg.token_file,
                                                   weights_sha256=self.heads.weights_sha256))
            self.client.check_tls()      # a TLS failure is an error before any frame, not an outage
            self.info = fetch_model_info(self.client, cfg.model)     # None while the cloud is unreachable
            if self.artifact is None and (cfg.tail is TailChoice.BANK or self.runtime is Runtime.ONNX):
                check_weights(self.info, self.heads, self.runtime)
            if self.info is not None and self.artifact is None:   # images of the size the cloud serves
                self.heads = self.heads.at_input(tuple(self.info.input_shape[1:]))
        self.runner = DeviceRunner(self.heads, cfg.model, self.client, codec.CodecConfig(cfg.zstd_level),
                                   self.artifact, use_bank=cfg.tail is TailChoice.BANK)
        if cfg.cpu_quota is not None:   # after imports and model loading, before profiling
            from device.cpu_quota import confine_to_cpu_fraction
            self.quota = confine_to_cpu_fraction(cfg.cpu_quota)
        if self.scheme is None:
            self.session = self._live_session()

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.session.state.heads.input_hw if self.session is not None else self.heads.input_hw

    def _planner(self):
        from device.live_planner import LivePlanner, runnable_errors
        cfg, spec = self.cfg, self.heads.spec
        if cfg.recipe is not None or cfg.db is not None or (self.info is not None and not self.info.bank):
            from planner.evaluate import default_db_path
            recipe = cfg.recipe or "ft0-"
            if cfg.recipe is None:
                log.warning("the cloud holds no bank of fine-tuned tails for %s: planning over the database's "
                            "%s rows (the unmodified network)", cfg.model, recipe)
            errors, base = runnable_errors(cfg.db or default_db_path(cfg.model),
                                           cfg.model, cfg.dataset_name or spec.dataset or "", recipe)
            return LivePlanner(errors, base, cfg.requirement, hysteresis=cfg.hysteresis, objective=cfg.objective,
                               pipeline_depth=cfg.pipeline_depth)
        planner = LivePlanner({}, 0.0, cfg.requirement, hysteresis=cfg.hysteresis, from_bank=True,
                              objective=cfg.objective, pipeline_depth=cfg.pipeline_depth)
        if self.info is not None:
            planner.use_server_info(self.info)
        return planner

    def _live_session(self):
        from device.device_times import cached_device_times
        from device.live_profile import LiveState
        from device.session import LiveSession
        if self.artifact is not None:
            raise InputError("--scheme auto plans over the unmodified model and the cloud's bank; drop --artifact")
        cfg = self.cfg
        device = cached_device_times(self.heads, cfg.cpu_quota)
        planner = self._planner()
        from device.cpu_quota import cpu_limit
        client = self.client
        state = LiveState(cfg.model, self.heads, device, self.info, planner.base_error, cpu_limit=cpu_limit(),
                          call_cpu_s=lambda: client.call_cpu_s if client is not None else None)
        if state.cpu_limit is not None:
            planner.cpu_share = min(1.0, state.cpu_limit[0])
        session = LiveSession(self.runner, self.client, state, planner, probe_interval_s=cfg.probe_interval_s)
        session.start()
        return session

    def frame(self, image, label) -> tuple[FrameResult, dict]:
        """(FrameResult, extra JSON fields) for one image."""
        if self.session is None:
            return self.runner.run(self.scheme, image, label, lossless=self.cfg.lossless), {}
        return _session_pair(self.session.process(image, label))

    def frames(self, source: Iterable[tuple[np.ndarray, int | None]]) -> Iterator[tuple[FrameResult, dict]]:
        """(FrameResult, extra JSON fields) for every (image, label) of `source`, in order: one at a
        time at depth 1, else up to `pipeline_depth` in flight over one stream."""
        if self.cfg.pipeline_depth == 1:
            for image, label in source:
                yield self.frame(image, label)
            return
        from device.pipeline import Pipeline
        pipe = Pipeline(self.runner, self.cfg.pipeline_depth, self.cfg.timeout_s, self.cfg.lossless)
        try:
            if self.session is None:
                for image, label in source:
                    yield from ((r, {}) for r, _ in pipe.submit(self.scheme, image, label))
                yield from ((r, {}) for r, _ in pipe.drain())
            else:
                for image, label in source:
                    yield from (_session_pair(f) for f in self.session.submit(pipe, image, label))
                yield from (_session_pair(f) for f in self.session.drain(pipe))
        finally:
            pipe.close()

    def close(self) -> None:
        if self.session is not None:
            if self.cfg.profile_out:
                self.session.state.write_profile(self.cfg.profile_out)
            self.session.close()
        if self.client is not None:
            self.client.close()
        if self.quota is not None:
            self.quota.release()


def _session_pair(f) -> tuple[FrameResult, dict]:
    return f.result, {"planned": f.planned, "bandwidth_mbps": f.bandwidth_mbps,
                      "link_rtt_s": f.rtt_s, "replanned": f.replanned}
