"""Prometheus metrics of both daemons, scraped from real processes and parsed with
prometheus-client's own parser."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from device.client import ClientConfig, CloudClient
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.data import load_fashion_mnist
from planner.models import build_model
from planner.scheme import Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb
from tests.conftest import REPO, CloudProcess

FAST = ("--model", "fmnist-vgg", "--profile-repeats", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of http://127.0.0.1:port/metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_cloud_metrics_count_what_the_client_did():
    port = free_port()
    cloud = CloudProcess(*FAST, "--metrics-port", str(port))
    images = load_fashion_mnist("test")[0][:8].numpy()
    runner = DeviceRunner(TorchHeads(build_model("fmnist-vgg")), "fmnist-vgg", None)
    reqs = [runner.prepare(Scheme.parse("3:16:4"), img)[0] for img in images]
    try:
        before = scrape(port)
        assert value(before, "coinfer_model_loaded", model="fmnist-vgg") == 1
        with CloudClient(ClientConfig(cloud.address, timeout_s=30)) as c:
            for r in reqs[:5]:
                c.infer(r)
            c.infer(reqs[0])                                     # a retry: answered from the cache
            for _ in range(2):
                with pytest.raises(grpc.RpcError):
                    c.infer(pb.InferRequest(request_id="bad", model="fmnist-vgg"))
            assert len(list(c.infer_stream(reqs[5:8], timeout_s=30))) == 3
        after = scrape(port)
    finally:
        assert cloud.stop() == 0
    assert value(after, "coinfer_requests_total", method="Infer", code="OK") == 6
    assert value(after, "coinfer_requests_total", method="Infer", code="INVALID_ARGUMENT") == 2
    assert value(after, "coinfer_requests_total", method="InferStream", code="OK") == 3
    assert value(after, "coinfer_request_seconds_count", method="Infer") == 8
    assert value(after, "coinfer_request_seconds_bucket", method="Infer", le="+Inf") == 8
    assert value(after, "coinfer_decode_seconds_count") == 9 and value(after, "coinfer_tail_seconds_count") == 9
    assert value(after, "coinfer_received_bytes_total", method="Infer") == \
        sum(r.ByteSize() for r in reqs[:5]) + reqs[0].ByteSize() + 2 * pb.InferRequest(
            request_id="bad", model="fmnist-vgg").ByteSize()
    assert value(after, "coinfer_cache_hits_total") == 1
    assert value(after, "coinfer_open_streams") == 0 and value(after, "coinfer_inflight_requests") == 0
    assert value(after, "coinfer_inflight_bytes") == 0 and value(after, "coinfer_cache_bytes") > 0


def test_device_run_daemon_metrics():
    cloud = CloudProcess(*FAST)
    port = free_port()
    device = subprocess.Popen(
        [sys.executable, "-m", "device", "run", "--cloud", cloud.address, "--scheme", "3:16:4",
         "--dataset", "fashion-mnist", "--loop", "--interval-s", "0.02", "--quiet",
         "--metrics-port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, samples = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            try:
                samples = scrape(port)
            except OSError:
                samples = {}
            if value(samples, "coinfer_device_frames_total", scheme="3:16:4", outcome="cloud") >= 5:
                break
            time.sleep(0.5)
        frames = value(samples, "coinfer_device_frames_total", scheme="3:16:4", outcome="cloud")
        assert frames >= 5, device.stderr.read() if device.poll() is not None else samples
        assert value(samples, "coinfer_device_frame_seconds_count") >= frames
        assert value(samples, "coinfer_device_sent_bytes_total") > 0
        assert ("coinfer_device_bandwidth_mbps", ()) in samples and ("coinfer_device_rtt_seconds", ()) in samples
        assert value(samples, "coinfer_device_fallbacks_total") == 0
    finally:
        device.send_signal(signal.SIGTERM)
        out, err = device.communicate(timeout=60)
        assert cloud.stop() == 0
    assert device.returncode == 0, err
    assert '"images"' in out or "images" in out
