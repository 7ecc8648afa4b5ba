"""The device's work in plain Python: run the head, encode, ask the cloud, time it all."""
from __future__ import annotations

import itertools
import logging
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import grpc
import numpy as np

from common import codec
from device.client import CloudClient
from device.heads import Heads
from planner.scheme import DEVICE_ONLY, Mode, Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb

log = logging.getLogger(__name__)

# InferResponse.tail -> the name the JSON reports (shared/CONTRACTS.md: `tail`)
TAIL_NAMES = {pb.TAIL_BANK: "bank", pb.TAIL_UNMODIFIED: "unmodified", pb.TAIL_ARTIFACT: "artifact",
              pb.TAIL_FULL: None, pb.TAIL_UNSPECIFIED: None}

# The cloud could not answer this frame in time: it runs on the device instead. Any
# other status (bad request, wrong token, mismatched artifact) is an error, not a fallback.
FALLBACK_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class FrameResult:
    """One image's outcome and its latency breakdown (seconds, bytes)."""

    request_id: str
    scheme: str              # `P:C:B` or a single-end name, as run
    top1: int                # predicted class
    label: int | None        # true class when known
    head_s: float            # device compute: head (or whole net for device-only)
    encode_s: float          # device: quantize + pack + zstd (or image compression)
    wire_bytes: int          # application bytes sent to the cloud (serialized request)
    rtt_s: float             # send to answer, as seen by the device
    decode_s: float          # cloud: decompress + dequantize (from the answer)
    tail_s: float            # cloud: tail compute (from the answer)
    total_s: float           # end to end on the device
    fallback: str | None = None  # why this frame ran device-only instead (cloud status), else None
    tail: str | None = None      # split frames: the cloud's tail, "bank", "unmodified" or "artifact"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class DeviceRunner:
    """Runs one model on the device under one scheme; the cloud does the rest."""

    def __init__(self, heads: Heads, model_name: str, client: CloudClient | None,
                 codec_cfg: codec.CodecConfig = codec.CodecConfig(), artifact=None, use_bank: bool = True):
        self.heads = heads
        self.model_name = model_name
        self.client = client
        self.codec_cfg = codec_cfg
        self.artifact = artifact           # planner.artifact.Artifact or None
        self.use_bank = use_bank           # split frames ask for the cloud's fine-tuned tail of their scheme
        self._warned_unmodified: set[str] = set()
        self._ids = itertools.count()
        self._id_prefix = uuid.uuid4().hex[:12]
        self._artifact_heads: Heads | None = None
        # called with (request, response, round trip s, encode s) for every answered frame
        self.on_answer: Callable[[pb.InferRequest, pb.InferResponse, float, float], None] | None = None

    def new_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def heads_for(self, scheme: Scheme) -> Heads:
        if self.artifact is not None and scheme.is_split:
            if scheme != self.artifact.scheme:
                raise ValueError(f"--scheme {scheme} differs from the artifact's {self.artifact.scheme}")
            if self._artifact_heads is None:      # artifacts are torch networks (the torch runtime only)
                from device.torch_heads import TorchHeads
                self._artifact_heads = TorchHeads(self.artifact.model)
            return self._artifact_heads
        return self.heads

    def kept(self, scheme: Scheme) -> np.ndarray | None:
        """Wire channel indices: None (all of the artifact's pruned conv) or the kept subset."""
        if self.artifact is not None:
            return None
        return self.heads.kept(scheme.partition, scheme.channels)

    def prepare(self, scheme: Scheme, image: np.ndarray, lossless: bool = False
                ) -> tuple[pb.InferRequest | None, np.ndarray | None, float, float]:
        """(C, H, W) uint8 image -> (request or None, local logits or None, head_s, encode_s)."""
        t0 = time.perf_counter()
        if scheme.mode is Mode.CLOUD_ONLY:
            msg = codec.encode_image(image, self.codec_cfg)
            req = pb.InferRequest(request_id=self.new_request_id(), model=self.model_name, image=msg)
            return req, None, 0.0, time.perf_counter() - t0
        if scheme.mode is Mode.DEVICE_ONLY:
            logits = self.heads.logits(image)
            return None, logits, time.perf_counter() - t0, 0.0
        fm = self.heads_for(scheme).head(image, scheme.partition)     # (C_p, H_p, W_p) float32
        t1 = time.perf_counter()
        enc = codec.encode_feature_map(fm, scheme.partition, self.kept(scheme),
                                       None if lossless else scheme.bits, self.codec_cfg)
        bank = self.use_bank and self.artifact is None and not lossless
        req = pb.InferRequest(request_id=self.new_request_id(), model=self.model_name,
                              artifact_sha256=self.artifact.sha256 if self.artifact else "",
                              feature_map=codec.feature_map_to_proto(enc), bank_scheme=str(scheme) if bank else "")
        return req, None, t1 - t0, time.perf_counter() - t1

    def tail_of(self, req: pb.InferRequest, resp: pb.InferResponse) -> str | None:
        """The answer's tail name; warns once per scheme the cloud's bank lacks."""
        tail = TAIL_NAMES.get(resp.tail)
        if req.bank_scheme and tail == "unmodified" and req.bank_scheme not in self._warned_unmodified:
            self._warned_unmodified.add(req.bank_scheme)
            log.warning("the cloud's bank has no fine-tuned tail for %s: it ran the unmodified tail, whose "
                        "accuracy at this compression can be far lower", req.bank_scheme)
        return tail

    def run(self, scheme: Scheme, image: np.ndarray, label: int | None = None,
            lossless: bool = False) -> FrameResult:
        """One image end to end (unary call)."""
        t0 = time.perf_counter()
        req, logits, head_s, encode_s = self.prepare(scheme, image, lossless)
        if req is None:
            return FrameResult(self.new_request_id(), str(scheme), int(np.argmax(logits)), label,
                               head_s, encode_s, 0, 0.0, 0.0, 0.0, time.perf_counter() - t0)
        if self.client is None:
            raise ValueError(f"scheme {scheme} needs a cloud (--cloud HOST:PORT)")
        try:
            resp, rtt = self.client.infer(req)
            if self.on_answer is not None:
                self.on_answer(req, resp, rtt, encode_s)
        except grpc.RpcError as e:
            if e.code() not in FALLBACK_CODES:
                raise
            # the frame keeps its id: one id per frame, fallback or not
            _, logits, local_s, _ = self.prepare(DEVICE_ONLY, image)
            return FrameResult(req.request_id, str(DEVICE_ONLY), int(np.argmax(logits)), label, local_s, 0.0,
                               0, 0.0, 0.0, 0.0, time.perf_counter() - t0, f"{e.code().name}: {e.details()}")
        tail = self.tail_of(req, resp)
        return FrameResult(req.request_id, str(scheme), int(resp.top1), label, head_s, encode_s,
                           req.ByteSize(), rtt, resp.decode_s, resp.tail_s, time.perf_counter() - t0,
                           tail=tail)


def summarize(results: Sequence[FrameResult], wall_s: float | None = None, cpu_s: float | None = None) -> dict:
    """The contract's `coinfer-device infer --json` summary; `wall_s`: seconds from the first
    frame's start to the last frame's answer (throughput_fps = images / wall_s); `cpu_s`: the
    device process's CPU seconds over the same span (every thread)."""
    counts = Counter(r.scheme for r in results)
    lat = np.array([r.total_s for r in results]) if results else np.zeros(0)
    labelled = [r for r in results if r.label is not None]
    acc = (sum(r.top1 == r.label for r in labelled) / len(labelled)) if labelled else None

    def mean(attr: str) -> float:
        return float(statistics.fmean(getattr(r, attr) for r in results)) if results else 0.0

    tails = {r.tail for r in results if r.tail is not None}   # split frames the cloud answered
    return {
        "scheme": counts.most_common(1)[0][0] if counts else None,
        "tail": (tails.pop() if len(tails) == 1 else "mixed") if tails else None,
        "scheme_counts": dict(counts),
        "images": len(results),
        "top1_accuracy": acc,
        "latency_s": {"p50": float(np.percentile(lat, 50)) if len(lat) else None,
                      "p90": float(np.percentile(lat, 90)) if len(lat) else None,
                      "mean": float(lat.mean()) if len(lat) else None},
        "wire_bytes_mean": mean("wire_bytes"),
        "fallbacks": sum(r.fallback is not None for r in results),
        "head_s_mean": mean("head_s"),
        "encode_s_mean": mean("encode_s"),
        "rtt_s_mean": mean("rtt_s"),
        "decode_s_mean": mean("decode_s"),
        "tail_s_mean": mean("tail_s"),
        "throughput_fps": len(results) / wall_s if results and wall_s else None,
        "cpu_s_per_frame": cpu_s / len(results) if results and cpu_s is not None else None,
    }
