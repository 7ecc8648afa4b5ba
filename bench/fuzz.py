"""Seeded mutations of real captured requests, and the engine in this process as the oracle.

`captured_requests()` records what a device really sends (split frames at several schemes,
a lossless frame, cloud-only images). `mutated(req, rng, i)` changes one field, chosen in
turn so every field is hit, plus up to two more at random. `Oracle.answer(req)` runs the
same request through `cloud.engine.Engine` here: the server may answer OK only where the
engine does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zstandard

from cloud.engine import Engine, ServedModel
from cloud.errors import status_for
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.data import load_fashion_mnist
from planner.models import build_model
from planner.scheme import Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb

# statuses a bad request may get; anything else (UNKNOWN, INTERNAL...) is unhandled
DEFINED = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"})
SCHEMES = ["0:32:8", "1:8:4", "2:16:2", "3:16:4", "4:3:5", "5:128:1"]


def captured_requests(n_images: int = 4) -> list[pb.InferRequest]:
    model = build_model("fmnist-vgg")
    runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", None)
    images = load_fashion_mnist("test")[0][:n_images].numpy()
    reqs = [runner.prepare(Scheme.parse(s), img)[0] for s in SCHEMES for img in images]
    reqs.append(runner.prepare(Scheme.parse("3:16:4"), images[0], lossless=True)[0])
    reqs += [runner.prepare(Scheme.parse("cloud-only"), img)[0] for img in images[:2]]
    return reqs


@dataclass
class LocalAnswer:
    code: str
    logits: list[float] | None = None


class Oracle:
    def __init__(self):
        model = build_model("fmnist-vgg")
        self.engine = Engine([ServedModel("fmnist-vgg", model, input_hw=model.spec.input_hw)], 64 << 20)

    def answer(self, req: pb.InferRequest) -> LocalAnswer:
        copy = pb.InferRequest()
        copy.CopyFrom(req)
        copy.request_id = ""                                  # never from the local cache
        try:
            return LocalAnswer("OK", list(self.engine.handle(copy, copy.ByteSize()).logits))
        except Exception as e:  # noqa: BLE001 - the status the server should give
            code = status_for(e)
            return LocalAnswer(code.name if code is not None else "INTERNAL")


def _ints(v: int, rng) -> int:
    return int(rng.choice([0, 1, v + 1, max(v - 1, 0), 2**32 - 1, rng.integers(0, 2**32), rng.integers(0, 64)]))


def _floats(values, rng) -> list[float]:
    vals = list(values)
    kind = rng.integers(0, 5)
    if kind == 0 and vals:
        vals[rng.integers(len(vals))] = float(rng.choice([np.nan, np.inf, -np.inf, 3e38, -3e38, -1.0, 1e-45]))
    elif kind == 1:
        vals = vals[: rng.integers(0, len(vals) + 1)]
    elif kind == 2:
        vals += [float(rng.normal())] * int(rng.integers(1, 4))
    elif kind == 3:
        vals = [float(v) * float(rng.choice([-1, 10, 1e30])) for v in vals]
    else:
        vals = []
    return vals


def _indices(values, rng) -> list[int]:
    vals = list(values) or list(range(int(rng.integers(1, 8))))
    kind = rng.integers(0, 4)
    if kind == 0:
        rng.shuffle(vals)
    elif kind == 1:
        vals[-1] = vals[0]
    elif kind == 2:
        vals[int(rng.integers(len(vals)))] = int(rng.choice([64, 2**32 - 1]))
    else:
        vals = vals[:-1]
    return vals


def _bytes(b: bytes, rng) -> bytes:
    kind = rng.integers(0, 7)
    if kind == 0 and b:
        arr = bytearray(b)
        arr[int(rng.integers(len(arr)))] ^= 0xFF
        return bytes(arr)
    if kind == 1:
        return b[: len(b) // 2]
    if kind == 2:
        return b + bytes(int(rng.integers(1, 64)))
    if kind == 3:
        return b""
    if kind == 4:
        return rng.bytes(int(rng.integers(1, 400)))
    if kind == 5:                                   # a frame declaring far more content
        cobj = zstandard.ZstdCompressor(write_content_size=True).compressobj(size=1 << 31)
        return cobj.compress(bytes(256)) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    cobj = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    return cobj.compress(bytes(1 << 22)) + cobj.flush()   # undeclared size, 4 MiB of zeros


def _strings(s: str, rng) -> str:
    return str(rng.choice(["", "x" * 129, "vgg16_bn", "fmnist-resnet", "ünïcødé", s + "\x00", "00" * 32]))


FM_INTS = ["partition", "channels", "height", "width", "encoding", "bits"]
IMG_INTS = ["channels", "height", "width"]
FIELDS = (["request_id", "model", "artifact_sha256", "input"] + [f"feature_map.{f}" for f in FM_INTS] +
          ["feature_map.channel_indices", "feature_map.offsets", "feature_map.scales", "feature_map.payload"] +
          [f"image.{f}" for f in IMG_INTS] + ["image.payload"])


def _mutate(r: pb.InferRequest, name: str, rng) -> None:
    part, _, attr = name.rpartition(".")
    if part and r.WhichOneof("input") != part:      # the field's message is not there: switch to it
        getattr(r, part).SetInParent()
    msg = getattr(r, part) if part else r
    if name == "input":
        kind = rng.integers(0, 2)
        r.ClearField("feature_map") if kind == 0 else r.ClearField("image")
    elif attr in ("request_id", "model", "artifact_sha256"):
        setattr(msg, attr, _strings(getattr(msg, attr), rng))
    elif attr in ("offsets", "scales"):
        vals = _floats(getattr(msg, attr), rng)
        del getattr(msg, attr)[:]
        getattr(msg, attr).extend(vals)
    elif attr == "channel_indices":
        vals = _indices(getattr(msg, attr), rng)
        del getattr(msg, attr)[:]
        getattr(msg, attr).extend(vals)
    elif attr == "payload":
        msg.payload = _bytes(msg.payload, rng)
    elif attr == "encoding":                        # an open enum: any int32
        msg.encoding = int(rng.choice([0, 1, 2, 3, -1, 2**31 - 1]))
    else:
        setattr(msg, attr, _ints(getattr(msg, attr), rng))


def mutated(req: pb.InferRequest, rng, i: int) -> tuple[pb.InferRequest, list[str]]:
    """A copy of `req` with field FIELDS[i % len] and up to two random others mutated."""
    r = pb.InferRequest()
    r.CopyFrom(req)
    r.request_id = f"fuzz-{i}"
    names = [FIELDS[i % len(FIELDS)]] + [str(f) for f in rng.choice(FIELDS, int(rng.integers(0, 3)))]
    for name in names:
        _mutate(r, name, rng)
    return r, names
