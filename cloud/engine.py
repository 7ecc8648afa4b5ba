"""The cloud's work in plain Python: decode a frame, run the tail, answer.

The gRPC servicer (cloud/servicer.py) only converts messages and maps exceptions.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Protocol

import numpy as np
import torch

from cloud.errors import (ArtifactMismatchError, BankRequestError, DeadlineExpiredError, MissingInputError,
                          UnknownPartitionError, WeightsMismatchError)
from cloud.limits import AnswerCache, InflightBudget, check_request, request_digest
from common import codec
from common.limits import WEIGHTS_METADATA_KEY
from common.timing import median_seconds
from planner.bank import LoadedBank
from planner.models import SplitCNN, UnknownModelError, partition_shapes
from planner.scheme import Scheme, SchemeError
from protos.coinfer.v1 import coinfer_pb2 as pb

log = logging.getLogger(__name__)


def software_version() -> str:
    try:
        return metadata.version("opt-coinfer")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class ServedModel:
    """One model this server runs, with its fine-tuned artifacts and measured tail times."""

    name: str
    model: SplitCNN
    artifacts: dict[str, object] = field(default_factory=dict)  # sha256 -> planner.artifact.Artifact
    input_hw: tuple[int, int] = (0, 0)          # image size the partition table is for
    tail_s: list[float] = field(default_factory=list)  # median tail seconds per partition
    full_model_s: float = 0.0                   # median whole-network seconds (cloud-only)
    weights_sha256: str = ""                    # of the weights file served ("" = random initialisation)
    bank: LoadedBank | None = None              # fine-tuned tails by scheme (--bank)

    def shapes(self, net: SplitCNN) -> list[tuple[int, int, int]]:
        """(C, H, W) per partition of `net` (the unmodified model or an artifact's)."""
        return partition_shapes(net.spec, self.input_hw)

    @torch.inference_mode()
    def measure(self, repeats: int, warmup: int = 3) -> None:
        """Tail seconds per partition and full-model seconds on this machine (warm-up
        first: the first calls of a fresh process are many times slower)."""
        c_in = self.model.spec.in_channels
        image = torch.zeros(1, c_in, *self.input_hw)
        self.full_model_s = median_seconds(lambda: self.model(image), repeats, warmup)
        self.tail_s = []
        for p, (c, h, w) in enumerate(self.shapes(self.model)):
            fm = torch.zeros(1, c, h, w)
            self.tail_s.append(median_seconds(lambda: self.model.tail(fm, p), repeats, warmup))

    def info(self) -> pb.ModelInfo:
        parts = [
            pb.Partition(index=p.index, channels=c, height=h, width=w, after_pooling=p.after_pooling,
                         cloud_tail_s=self.tail_s[p.index] if self.tail_s else 0.0)
            for p, (c, h, w) in zip(self.model.partitions, self.shapes(self.model))
        ]
        arts = [pb.ArtifactInfo(sha256=sha, scheme=str(a.scheme), channel_indices=list(a.channel_indices))
                for sha, a in self.artifacts.items()]
        bank, base_error, recipe = [], 0.0, ""
        if self.bank is not None:
            m = self.bank.manifest
            bank = [pb.BankScheme(scheme=str(e.scheme), channel_indices=list(e.channel_indices),
                                  top1_error=e.top1_error, accuracy_loss=e.accuracy_loss)
                    for e in m.schemes if e.scheme in self.bank.tails]
            base_error, recipe = m.base_top1_error, m.recipe
        return pb.ModelInfo(name=self.name, num_classes=self.model.num_classes,
                            input_shape=[self.model.spec.in_channels, *self.input_hw],
                            partitions=parts, cloud_full_model_s=self.full_model_s, artifacts=arts,
                            weights_sha256=self.weights_sha256, bank=bank, base_top1_error=base_error,
                            bank_recipe=recipe)

    def tail_for(self, bank_scheme: str, enc: codec.EncodedFeatureMap
                 ) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
        """(tail function on the zero-filled map, pb.Tail) for a request naming `bank_scheme`.

        The named scheme must describe the feature map, and a bank tail's channels must be
        the ones it was fine-tuned on; a scheme the bank lacks runs the unmodified tail."""
        p = enc.partition
        unmodified = (lambda x: self.model.tail(x, p)), pb.TAIL_UNMODIFIED
        if not bank_scheme:
            return unmodified
        try:
            scheme = Scheme.parse(bank_scheme[:32])
        except SchemeError as e:
            raise BankRequestError(f"bank_scheme: {e}") from None
        if not scheme.is_split:
            raise BankRequestError(f"bank_scheme: expected P:C:B, got {scheme}")
        for name, want, got in (("partition", scheme.partition, enc.partition),
                                ("channels", scheme.channels, enc.channels), ("bits", scheme.bits, enc.bits)):
            if want != got:
                raise BankRequestError(f"feature_map.{name}: bank_scheme {scheme} has {name} {want}, "
                                       f"the feature map {got}")
        tail = self.bank.tails.get(scheme) if self.bank is not None else None
        if tail is None:
            return unmodified
        if enc.encoding is not codec.Encoding.QUANTIZED:
            raise BankRequestError(f"feature_map.encoding: bank tail {scheme} expects ENCODING_QUANTIZED, "
                                   f"got {enc.encoding.name}")
        sent = np.asarray(enc.channel_indices) if len(enc.channel_indices) else np.arange(enc.channels)
        if not np.array_equal(sent, tail.keep.numpy()):
            raise BankRequestError(f"feature_map.channel_indices: bank tail {scheme} was fine-tuned on "
                                   f"channels {tail.keep.tolist()[:16]}, got {sent.tolist()[:16]}; the device's "
                                   f"weights differ from the bank's")
        return tail, pb.TAIL_BANK


class Engine:
    """Runs requests against the served models. Thread-safe: models are only read.

    Validation, the answer cache and admission are here, once; the compute step (decode and
    tail) is the `runner`'s: in this process by default, or on Ray Serve (cloud.ray_engine)."""

    def __init__(self, models: list[ServedModel], max_message_bytes: int,
                 max_inflight_bytes: int = 1 << 30, answer_cache: int = 4096, runner: TailRunner | None = None):
        self.models = {m.name: m for m in models}
        self.runner = runner if runner is not None else LocalTails(self.models)
        self.max_message_bytes = max_message_bytes
        # the cache's bytes count in the memory bound; it may take an eighth of it
        self.answers = AnswerCache(answer_cache, max_bytes=min(32 << 20, max_inflight_bytes // 8))
        self.budget = InflightBudget(max_inflight_bytes, held=lambda: self.answers.nbytes)

    def handle(self, req: pb.InferRequest, received_bytes: int,
               time_remaining_s: float | None = None, caller: str = "",
               device_weights_sha256: str = "") -> pb.InferResponse:
        """Validation, then the answer cache (a hit needs the same request bytes from the same
        `caller`), then admission (memory bound, deadline) and `infer`.  A split frame from a
        head of other weights than served (`device_weights_sha256`, when the device says) is
        refused: the tail would continue someone else's network."""
        check_request(req)
        served = self.model(req.model)
        if (device_weights_sha256 and served.weights_sha256 and device_weights_sha256 != served.weights_sha256
                and req.WhichOneof("input") == "feature_map" and not req.artifact_sha256):
            raise WeightsMismatchError(
                f"{WEIGHTS_METADATA_KEY}: the device's head runs weights sha256 {device_weights_sha256}, but this "
                f"cloud serves {req.model} with weights sha256 {served.weights_sha256}; run both sides with the "
                "same weights (for an ONNX device: `coinfer-plan export --weights` the cloud's)")
        key = (caller.encode(), req.request_id.encode(),
               request_digest(req.SerializeToString(deterministic=True))) if req.request_id else None
        cached = self.answers.get(key)
        if cached is not None:
            return cached
        with self.budget.reserve(self.cost_bytes(served, req, received_bytes)):
            if time_remaining_s is not None and time_remaining_s <= 0:
                raise DeadlineExpiredError("deadline passed before the request was started")
            response = self.runner.infer(req, received_bytes)
        if not np.isfinite(np.asarray(response.logits, dtype=np.float32)).all():
            if req.WhichOneof("input") != "feature_map":
                raise RuntimeError("the network produced non-finite logits from a valid image")
            raise codec.CodecError("feature_map", "expected values the tail can carry, got a map "
                                                  "whose logits overflow to NaN or Inf")
        self.answers.put(key, response, response.ByteSize())
        return response

    @staticmethod
    def cost_bytes(served: ServedModel, req: pb.InferRequest, received_bytes: int) -> int:
        """Memory a request may need, from the served shapes (never from its own fields)."""
        if req.WhichOneof("input") == "image":
            c, (h, w) = served.model.spec.in_channels, served.input_hw
            return received_bytes + 5 * c * h * w               # uint8 image + float32 input
        shapes = served.shapes(served.model)
        p = req.feature_map.partition
        c, h, w = shapes[p] if p < len(shapes) else (0, 0, 0)
        return 2 * received_bytes + 9 * c * h * w               # codes + float32 map + zeros fill

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise UnknownModelError(
                f"model: {name!r} is not served here; served: {', '.join(sorted(self.models))}")
        return self.models[name]

    def server_info(self) -> pb.ServerInfo:
        return pb.ServerInfo(version=software_version(), max_message_bytes=self.max_message_bytes,
                             models=[m.info() for m in self.models.values()])

@dataclass
class Prepared:
    """One request decoded and ready for its network part (cloud.engine.LocalTails)."""

    request_id: str
    x: torch.Tensor                           # (1, C, H, W) float32: decoded map or preprocessed image
    run: Callable[[torch.Tensor], torch.Tensor]   # the tail (or whole network) to run on x
    tail: int                                 # pb.Tail
    key: tuple                                # requests with equal keys run as one batch
    decode_s: float                           # decompress and dequantize time, seconds
    received_bytes: int


class TailRunner(Protocol):
    """The compute step behind `Engine.handle`: decode and tail (or whole network)."""

    def infer(self, req: pb.InferRequest, received_bytes: int) -> pb.InferResponse: ...

    def close(self) -> None: ...


class LocalTails:
    """Decode and run tails in this process: the plain engine, and each Ray Serve replica."""

    def __init__(self, models: dict[str, ServedModel]):
        self.models = models

    def close(self) -> None:
        pass

    def infer(self, req: pb.InferRequest, received_bytes: int) -> pb.InferResponse:
        return self.run_batch([self.prepare(req, received_bytes)])[0][0]

    def _network(self, served: ServedModel, artifact_sha256: str, enc: codec.EncodedFeatureMap) -> SplitCNN:
        """The network that must run the tail: the unmodified one or the named artifact's."""
        if not artifact_sha256:
            return served.model
        art = served.artifacts.get(artifact_sha256)
        if art is None:
            held = ", ".join(served.artifacts) or "none"
            raise ArtifactMismatchError(
                f"feature map was made with artifact {artifact_sha256}, but this server holds "
                f"{held} for {served.name}; start both sides with the same --artifact")
        for name, want, got in (("partition", art.scheme.partition, enc.partition),
                                ("bits", art.scheme.bits, enc.bits)):
            if want != got:
                raise UnknownPartitionError(
                    f"feature_map.{name}: artifact {artifact_sha256[:12]} is {art.scheme}, "
                    f"expected {name} {want}, got {got}")
        return art.model

    @torch.inference_mode()
    def prepare(self, req: pb.InferRequest, received_bytes: int) -> Prepared:
        """Decode the request and pick the network part that answers it (validated requests only)."""
        served = self.models[req.model]
        kind = req.WhichOneof("input")
        t0 = time.perf_counter()
        if kind == "feature_map":
            enc = codec.feature_map_from_proto(req.feature_map)
            p = enc.partition
            net = self._network(served, req.artifact_sha256, enc)
            if req.artifact_sha256 and req.bank_scheme:
                raise BankRequestError("bank_scheme: expected none with artifact_sha256 (an artifact has its own tail)")
            if p >= len(net.partitions):
                raise UnknownPartitionError(
                    f"feature_map.partition: expected 0..{len(net.partitions) - 1} for "
                    f"{served.name}, got {p}")
            c, h, w = served.shapes(net)[p]
            if net is served.model:
                tail, tail_kind = served.tail_for(req.bank_scheme, enc)
            else:
                tail, tail_kind = (lambda x: net.tail(x, p)), pb.TAIL_ARTIFACT
            fm = codec.decode_feature_map(enc, total_channels=c, height=h, width=w)
            x = torch.from_numpy(fm).unsqueeze(0)             # (1, C_p, H_p, W_p) float32
            key = (served.name, req.artifact_sha256, p, tail_kind, req.bank_scheme if tail_kind == pb.TAIL_BANK else "")
        elif kind == "image":
            if req.artifact_sha256:
                raise ArtifactMismatchError(
                    f"cloud-only runs the unmodified model; got artifact {req.artifact_sha256}")
            shape = (served.model.spec.in_channels, *served.input_hw)
            img = codec.decode_image(req.image, shape)        # (C, H, W) uint8
            x = served.model.preprocess(torch.from_numpy(img).unsqueeze(0))
            tail, tail_kind, key = served.model, pb.TAIL_FULL, (served.name, "image")
        else:
            raise MissingInputError("input: expected a feature_map or an image, got neither")
        return Prepared(req.request_id, x, tail, tail_kind, key, time.perf_counter() - t0, received_bytes)

    @torch.inference_mode()
    def run_batch(self, items: list[Prepared]) -> list[tuple[pb.InferResponse, int]]:
        """Answers in the order of `items`, each with the size of the batch it ran in: items with
        equal keys (model, artifact, partition, tail) run as one batch; tail_s is the batch's time."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.key, []).append(i)
        out: list[tuple[pb.InferResponse, int] | None] = [None] * len(items)
        for idx in groups.values():
            t0 = time.perf_counter()
            logits = items[idx[0]].run(torch.cat([items[i].x for i in idx])).float().numpy()   # (n, classes)
            tail_s = time.perf_counter() - t0
            for row, i in enumerate(idx):
                scores, item = logits[row], items[i]
                out[i] = (pb.InferResponse(request_id=item.request_id, logits=scores.tolist(),
                                           top1=int(np.argmax(scores)), decode_s=item.decode_s, tail_s=tail_s,
                                           received_bytes=item.received_bytes, tail=item.tail), len(idx))
        return out


def probe(req: pb.ProbeRequest, receive_ns: int, max_response_bytes: int = 1 << 20) -> pb.ProbeResponse:
    if req.response_bytes > max_response_bytes:
        raise codec.CodecError("response_bytes",
                               f"expected at most {max_response_bytes} bytes, got {req.response_bytes}")
    return pb.ProbeResponse(payload=bytes(req.response_bytes), received_bytes=len(req.payload),
                            server_receive_ns=receive_ns, server_send_ns=time.time_ns())
