"""Faults: drain on SIGTERM, a cloud killed mid-stream, deadlines, bounds, fuzzed requests."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.client import ClientConfig, CloudClient
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.data import load_fashion_mnist
from planner.models import build_model
from planner.scheme import Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb
from tests.conftest import REPO, CloudProcess

FAST = ("--model", "fmnist-vgg", "--profile-repeats", "0")


@pytest.fixture(scope="module")
def images():
    return load_fashion_mnist("test")[0][:200].numpy()


@pytest.fixture(scope="module")
def runner_model():
    return build_model("fmnist-vgg")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


@pytest.mark.slow
def test_sigterm_drains_in_flight_work_and_exits_zero():
    # vgg11_bn at 896x896 cloud-only takes about 2 s even on an idle machine: long enough
    # to be in flight while the health check and the refused call happen
    cloud = CloudProcess("--model", "vgg11_bn", "--input-size", "896", "--profile-repeats", "0",
                         "--grace-s", "30")
    image = np.random.default_rng(0).integers(0, 256, (3, 896, 896), dtype=np.uint8)
    from common import codec
    slow = pb.InferRequest(request_id="in-flight", model="vgg11_bn", image=codec.encode_image(image))
    with CloudClient(ClientConfig(cloud.address, timeout_s=120)) as c:
        answers = {}
        t = threading.Thread(target=lambda: answers.update(r=c.infer(slow)[0]))
        t.start()
        time.sleep(0.3)                       # the request is now running its forward pass
        t0 = time.monotonic()
        cloud.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        assert health_status(c.channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            c.probe(10, 10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        t.join(60)
        assert answers["r"].request_id == "in-flight" and len(answers["r"].logits) == 1000
        assert cloud.proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 30


@pytest.mark.slow
def test_cloud_killed_mid_stream_loses_and_duplicates_no_frame(images, runner_model):
    port = free_port()
    cloud = CloudProcess(*FAST, "--port", str(port))          # the later --port wins
    results = []
    with CloudClient(ClientConfig(f"127.0.0.1:{port}", timeout_s=2)) as c:
        runner = DeviceRunner(TorchHeads(runner_model), "fmnist-vgg", c)
        scheme = Scheme.parse("3:16:4")
        try:
            for i, img in enumerate(images):
                if i == 50:
                    cloud.proc.send_signal(signal.SIGKILL)
                    cloud.proc.wait(10)
                if i == 100:
                    cloud = CloudProcess(*FAST, "--port", str(port))
                    deadline = time.monotonic() + 15   # reconnect backoff is capped at 2 s
                    while time.monotonic() < deadline and runner.run(scheme, img).fallback:
                        time.sleep(0.2)
                results.append(runner.run(scheme, img))
        finally:
            assert cloud.stop() == 0
    assert len(results) == 200
    assert len({r.request_id for r in results}) == 200
    down = results[50:100]
    assert all(r.fallback and r.scheme == "device-only" for r in down)
    assert all("UNAVAILABLE" in r.fallback or "DEADLINE" in r.fallback for r in down)
    assert all(r.fallback is None and r.scheme == "3:16:4" for r in results[:50] + results[100:])
    # the fallback answers are the device-only answers; the split ones came from the cloud
    assert all(r.rtt_s == 0 for r in down) and all(r.rtt_s > 0 for r in results[100:])


def test_answers_are_idempotent_by_request_id(fmnist_cloud, images, runner_model):
    with CloudClient(ClientConfig(fmnist_cloud.address)) as c:
        runner = DeviceRunner(TorchHeads(runner_model), "fmnist-vgg", c)
        req = runner.prepare(Scheme.parse("1:8:4"), images[0])[0]
        first, _ = c.infer(req)
        again, _ = c.infer(req)
        assert first == again                     # the same answer, timings included: not recomputed
        other = runner.prepare(Scheme.parse("1:8:4"), images[0])[0]
        assert other.request_id != req.request_id
        fresh, _ = c.infer(other)                 # another id: computed for it, not the cached answer
        assert fresh.request_id == other.request_id and list(fresh.logits) == list(first.logits)


def _device_summary(cloud: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "device", "infer", "--cloud", cloud, "--json", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_device_survives_an_unresolvable_cloud():
    s = _device_summary("no-such-host.invalid:50051", "--scheme", "3:8:4", "--dataset", "fashion-mnist",
                        "--limit", "3", "--timeout-s", "3")
    assert s["fallbacks"] == 3 and s["scheme_counts"] == {"device-only": 3}


@pytest.mark.slow
def test_device_survives_a_cloud_slower_than_its_deadline(tmp_path):
    """vgg11_bn cloud-only (about 0.1 s on an idle machine) takes far longer than a 20 ms deadline: every frame falls
    back to device-only and the command still succeeds."""
    from PIL import Image
    paths = []
    for i in range(3):
        arr = np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8)
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(arr).save(paths[-1])
    cloud = CloudProcess("--model", "vgg11_bn", "--profile-repeats", "0")
    try:
        s = _device_summary(cloud.address, "--model", "vgg11_bn", "--scheme", "cloud-only",
                            "--timeout-s", "0.02", *map(str, paths))
        assert s["fallbacks"] == 3 and s["scheme_counts"] == {"device-only": 3}
        ok = _device_summary(cloud.address, "--model", "vgg11_bn", "--scheme", "cloud-only",
                             "--timeout-s", "60", str(paths[0]))
        assert ok["fallbacks"] == 0 and ok["scheme_counts"] == {"cloud-only": 1}
    finally:
        assert cloud.stop() == 0


@pytest.mark.slow
def test_memory_bound_answers_resource_exhausted(images, runner_model):
    # partition 5 (128x3x3) needs ~10 kB, partition 0 (32x28x28) ~230 kB
    cloud = CloudProcess(*FAST, "--max-inflight-bytes", "60000")
    try:
        with CloudClient(ClientConfig(cloud.address)) as c:
            runner = DeviceRunner(TorchHeads(runner_model), "fmnist-vgg", c)
            big = runner.prepare(Scheme.parse("0:32:8"), images[0])[0]
            with pytest.raises(grpc.RpcError) as err:
                c.infer(big)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "memory bound" in err.value.details()
            small = runner.prepare(Scheme.parse("5:128:8"), images[0])[0]
            assert len(c.infer(small)[0].logits) == 10
    finally:
        assert cloud.stop() == 0


# --- fuzzing: every answer is a result or a defined status, and the server stays healthy
DEFINED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.RESOURCE_EXHAUSTED}
u32 = st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1))
floats = st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=40)
feature_maps = st.builds(
    pb.FeatureMap, partition=u32, channels=u32, height=u32, width=u32, encoding=st.integers(0, 3),
    bits=u32, channel_indices=st.lists(u32, max_size=40), offsets=floats, scales=floats,
    payload=st.one_of(st.binary(max_size=300), st.just(b"\x28\xb5\x2f\xfd" + bytes(20))))
requests = st.builds(
    pb.InferRequest, request_id=st.text(max_size=8), model=st.sampled_from(["fmnist-vgg", "", "vgg99"]),
    artifact_sha256=st.sampled_from(["", "00" * 32]),
    feature_map=st.one_of(st.none(), feature_maps),
    image=st.one_of(st.none(), st.builds(pb.Image, channels=u32, height=u32, width=u32,
                                         payload=st.binary(max_size=300))))


def test_fuzzed_requests_get_results_or_defined_statuses(fmnist_cloud):
    seen: set = set()
    with CloudClient(ClientConfig(fmnist_cloud.address, timeout_s=10)) as c:
        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(requests)
        def check(req):
            req.request_id = f"fuzz-{len(seen)}-{req.request_id}"   # no cached answers
            try:
                resp, _ = c.infer(req)
                assert len(resp.logits) == 10
                seen.add("OK")
            except grpc.RpcError as e:
                assert e.code() in DEFINED, (e.code(), e.details(), req)
                seen.add(e.code())
        check()
        assert health_status(c.channel) == health_pb2.HealthCheckResponse.SERVING
    assert grpc.StatusCode.INVALID_ARGUMENT in seen and grpc.StatusCode.NOT_FOUND in seen


@pytest.mark.slow
def test_concurrency_bound_answers_resource_exhausted():
    """With one call allowed, a second call while a slow one runs is refused, not queued."""
    cloud = CloudProcess("--model", "vgg11_bn", "--input-size", "896", "--profile-repeats", "0",
                         "--max-concurrent-rpcs", "1")
    from common import codec
    image = np.random.default_rng(1).integers(0, 256, (3, 896, 896), dtype=np.uint8)
    slow = pb.InferRequest(request_id="slow", model="vgg11_bn", image=codec.encode_image(image))
    try:
        with CloudClient(ClientConfig(cloud.address, timeout_s=120)) as c:
            done = {}
            t = threading.Thread(target=lambda: done.update(r=c.infer(slow)[0]))
            t.start()
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as err:
                c.probe(10, 10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            t.join(60)
            assert done["r"].request_id == "slow"
            assert c.probe(10, 10).up_bytes == 10          # free again
    finally:
        assert cloud.stop() == 0
