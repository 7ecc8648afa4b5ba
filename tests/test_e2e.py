"""Cloud and device as two processes on an ephemeral port, over real gRPC."""
from __future__ import annotations

import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
import torch
import zstandard
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common import codec
from device.client import ClientConfig, CloudClient
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.data import load_fashion_mnist
from planner.models import build_model, partition_shapes
from planner.scheme import Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb
from tests.conftest import REPO, CloudProcess

SPLIT_SCHEMES = ["0:32:8", "1:8:4", "3:64:2", "5:128:1", "4:3:5"]


@pytest.fixture(scope="module")
def images():
    x, y = load_fashion_mnist("test")
    return x[:24].numpy(), y[:24].numpy()


@pytest.fixture(scope="module")
def model():
    return build_model("fmnist-vgg")


@pytest.fixture
def client(fmnist_cloud):
    with CloudClient(ClientConfig(fmnist_cloud.address, timeout_s=30)) as c:
        yield c


@pytest.mark.parametrize("scheme", SPLIT_SCHEMES)
@torch.inference_mode()
def test_split_answers_equal_in_process_computation(client, model, images, scheme):
    s = Scheme.parse(scheme)
    runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", client, use_bank=False)   # the unmodified tail
    for img, label in zip(*images):
        req, _, _, _ = runner.prepare(s, img)
        resp, _ = client.infer(req)
        # the same frame, decoded and finished in this process
        enc = codec.feature_map_from_proto(req.feature_map)
        c, h, w = partition_shapes(model.spec)[s.partition]
        fm = codec.decode_feature_map(enc, total_channels=c, height=h, width=w)
        local = model.tail(torch.from_numpy(fm).unsqueeze(0), s.partition)[0].numpy()
        np.testing.assert_allclose(np.array(resp.logits), local, atol=1e-5, rtol=0)
        assert resp.top1 == int(local.argmax())
        assert resp.request_id == req.request_id


def test_lossless_split_equals_device_only(client, model, images):
    runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", client)
    for p in range(len(model.partitions)):
        s = Scheme.split(p, model.partitions[p].channels, 8)
        for img in images[0][:6]:
            req, _, _, _ = runner.prepare(s, img, lossless=True)
            resp, _ = client.infer(req)
            with torch.inference_mode():
                full = model(model.preprocess(torch.from_numpy(img).unsqueeze(0)))[0].numpy()
            np.testing.assert_allclose(np.array(resp.logits), full, atol=1e-4, rtol=0)


def test_device_only_and_cloud_only_agree_on_every_prediction(client, model, images):
    runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", client)
    for img, label in zip(*images):
        d = runner.run(Scheme.parse("device-only"), img, int(label))
        c = runner.run(Scheme.parse("cloud-only"), img, int(label))
        assert d.top1 == c.top1
        assert d.wire_bytes == 0 and c.wire_bytes > 0
        assert c.tail_s > 0 and c.rtt_s > 0


def test_streaming_answers_carry_their_request_ids(client, model, images):
    runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", client)
    s = Scheme.parse("3:16:4")
    reqs = [runner.prepare(s, img)[0] for img in images[0]]
    unary = {r.request_id: client.infer(r)[0].top1 for r in reqs}
    streamed = {r.request_id: r.top1 for r in client.infer_stream(reqs, timeout_s=60)}
    assert streamed == unary


def test_health_reflection_and_server_info(fmnist_cloud, client):
    channel = client.channel
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "coinfer.v1.CoInfer"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"coinfer.v1.CoInfer", "grpc.health.v1.Health"} <= names
    info = client.server_info()
    (m,) = info.models
    assert m.name == "fmnist-vgg" and m.num_classes == 10 and list(m.input_shape) == [1, 28, 28]
    assert [(p.channels, p.height, p.width) for p in m.partitions] == partition_shapes(build_model("fmnist-vgg").spec)
    assert all(p.cloud_tail_s > 0 for p in m.partitions) and m.cloud_full_model_s > 0
    assert info.version


def test_probe_reports_bytes_and_server_time(client):
    r = client.probe(up_bytes=50_000, down_bytes=1000)
    assert r.up_bytes == 50_000 and r.down_bytes == 1000
    assert 0 <= r.server_s < r.rtt_s


def _good_request(model, images) -> pb.InferRequest:
    runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", None)
    req, _, _, _ = runner.prepare(Scheme.parse("1:8:4"), images[0][0])
    return req


def _mutations():
    """(name, mutate(request), expected status)."""
    zc = zstandard.ZstdCompressor()
    INVALID, NOT_FOUND, PRECOND = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                   grpc.StatusCode.FAILED_PRECONDITION)

    def fm(**kw):
        def mutate(r):
            for k, v in kw.items():
                if k in ("channel_indices", "offsets", "scales"):
                    del getattr(r.feature_map, k)[:]
                    getattr(r.feature_map, k).extend(v)
                else:
                    setattr(r.feature_map, k, v)
        return mutate

    def payload(fn):
        def mutate(r):
            r.feature_map.payload = fn(r.feature_map.payload)
        return mutate

    def decompressed(r):
        return zstandard.ZstdDecompressor().decompress(r.feature_map.payload)

    return [
        ("wrong height", fm(height=13), INVALID),
        ("wrong width", fm(width=15), INVALID),
        ("unknown partition", fm(partition=6), INVALID),
        ("channel index out of range", fm(channel_indices=[0, 1, 2, 3, 4, 5, 6, 40]), INVALID),
        ("repeated channel index", fm(channel_indices=[0, 1, 2, 3, 4, 5, 6, 6]), INVALID),
        ("bits 0", fm(bits=0), INVALID),
        ("bits 9", fm(bits=9), INVALID),
        ("payload one byte short", lambda r: setattr(r.feature_map, "payload", zc.compress(decompressed(r)[:-1])), INVALID),
        ("payload one byte long", lambda r: setattr(r.feature_map, "payload", zc.compress(decompressed(r) + b"\0")), INVALID),
        ("corrupt zstd", payload(lambda p: p[:4] + bytes(b ^ 0xFF for b in p[4:])), INVALID),
        ("truncated zstd", payload(lambda p: p[: len(p) // 2]), INVALID),
        ("zstd frame declaring a huge size", payload(lambda p: _huge_frame()), INVALID),
        ("NaN scale", fm(scales=[float("nan")] * 8), INVALID),
        ("Inf scale", fm(scales=[float("inf")] * 8), INVALID),
        ("Inf offset", fm(offsets=[float("-inf")] * 8), INVALID),
        ("absurd channels", fm(channels=10**9), INVALID),
        ("absurd height", fm(height=10**9), INVALID),
        ("encoding unspecified", fm(encoding=0), INVALID),
        ("unknown model", lambda r: setattr(r, "model", "resnet-9000"), NOT_FOUND),
        ("unknown artifact", lambda r: setattr(r, "artifact_sha256", "ab" * 32), PRECOND),
        ("empty message", lambda r: r.Clear(), INVALID),
    ]


def _huge_frame() -> bytes:
    """A valid zstd frame whose header declares 4 GiB of content."""
    cobj = zstandard.ZstdCompressor(write_content_size=True).compressobj(size=4 << 30)
    return cobj.compress(bytes(1024)) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


MUTATIONS = _mutations()


@pytest.mark.parametrize("name,mutate,code", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_malformed_request_gets_its_status_and_server_keeps_serving(client, model, images, name, mutate, code):
    good = _good_request(model, images)
    bad = pb.InferRequest()
    bad.CopyFrom(good)
    mutate(bad)
    if name == "empty message":
        bad.model = "fmnist-vgg"
    with pytest.raises(grpc.RpcError) as err:
        client.infer(bad)
    assert err.value.code() == code, err.value.details()
    assert err.value.details()
    resp, _ = client.infer(good)
    assert len(resp.logits) == 10


@pytest.mark.slow
def test_oversize_message_is_resource_exhausted():
    cloud = CloudProcess("--model", "fmnist-vgg", "--profile-repeats", "0", "--max-message-bytes", "20000")
    try:
        with CloudClient(ClientConfig(cloud.address, timeout_s=30)) as c:
            with pytest.raises(grpc.RpcError) as err:
                c.probe(up_bytes=100_000, down_bytes=0)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert c.probe(up_bytes=1000, down_bytes=10).up_bytes == 1000
    finally:
        assert cloud.stop() == 0


def test_device_cli_json_summary(fmnist_cloud):
    out = subprocess.run(
        [sys.executable, "-m", "device", "infer", "--cloud", fmnist_cloud.address, "--model", "fmnist-vgg",
         "--scheme", "3:16:4", "--dataset", "fashion-mnist", "--limit", "20", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    lines = out.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["scheme"] == "3:16:4" and summary["scheme_counts"] == {"3:16:4": 20}
    assert summary["images"] == 20 and 0 <= summary["top1_accuracy"] <= 1
    assert 0 < summary["latency_s"]["p50"] <= summary["latency_s"]["p90"]
    assert summary["wire_bytes_mean"] > 0
    frames = [json.loads(l) for l in lines[:-1]]
    assert len(frames) == 20 and all(f["rtt_s"] >= f["decode_s"] + f["tail_s"] for f in frames)


@pytest.mark.parametrize("argv,message", [
    (["--scheme", "1:8"], "P:C:B"),
    (["--scheme", "1:8:9"], "bits B must be in 1..8"),
    (["--scheme", "1:99:4", "--cloud", "127.0.0.1:1"], "channels C in 1..32"),
    (["--model", "resnet"], "Unknown model 'resnet'"),
    (["--scheme", "cloud-only"], "needs --cloud"),
])
def test_device_cli_bad_input_is_named(argv, message):
    out = subprocess.run([sys.executable, "-m", "device", "infer", "--dataset", "fashion-mnist",
                          "--limit", "2", *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr, out.stderr
