"""`coinfer-cloud serve --engine ray`: the tails in Ray Serve replicas behind the same front door.

One Ray cloud daemon (a local Ray instance, 2 replicas) for the module, compared with the plain
session daemon on real Fashion-MNIST; then SIGTERM, and no process of its own left behind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from cloud.engine import LocalTails, ServedModel
from device.client import ClientConfig, CloudClient
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.data import load_fashion_mnist
from planner.models import build_model
from planner.scheme import Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb
from tests.conftest import REPO, CloudProcess
from tests.ray_cluster import children_by_parent
from tests.test_metrics import free_port, scrape, value

ray_installed = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import ray.serve"], capture_output=True).returncode != 0,
    reason="Ray Serve not installed (pip install 'opt-coinfer[ray]')")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children = children_by_parent()
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def ray_cloud():
    metrics_port = free_port()
    cloud = CloudProcess("--model", "fmnist-vgg", "--profile-repeats", "1", "--engine", "ray", "--replicas", "2",
                         "--batch-max-size", "8", "--batch-wait-s", "0.02", "--metrics-port", str(metrics_port))
    cloud.metrics_port = metrics_port
    yield cloud
    cloud.stop()


def device_infer(address: str, scheme: str, limit: int = 200) -> tuple[list[int], dict]:
    out = subprocess.run(
        [sys.executable, "-m", "device", "infer", "--cloud", address, "--model", "fmnist-vgg", "--scheme", scheme,
         "--dataset", "fashion-mnist", "--limit", str(limit), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    lines = out.stdout.strip().splitlines()
    frames = [json.loads(line) for line in lines[:-1]]
    assert all(f["fallback"] is None for f in frames)
    return [f["top1"] for f in frames], json.loads(lines[-1])


@pytest.mark.slow
@ray_installed
@pytest.mark.parametrize("scheme", ["1:8:4", "cloud-only", "device-only"])
def test_ray_engine_gives_the_plain_engines_predictions(fmnist_cloud, ray_cloud, scheme):
    plain_top1, plain = device_infer(fmnist_cloud.address, scheme)
    ray_top1, ray_ = device_infer(ray_cloud.address, scheme)
    assert len(ray_top1) == 200 and ray_top1 == plain_top1
    assert ray_["top1_accuracy"] == plain["top1_accuracy"] > 0.8


@pytest.mark.slow
@ray_installed
def test_concurrent_requests_are_batched_on_both_replicas_with_plain_answers(fmnist_cloud, ray_cloud):
    model = build_model("fmnist-vgg")
    x, _ = load_fashion_mnist("test")
    images = x[:64].numpy()
    with CloudClient(ClientConfig(ray_cloud.address, timeout_s=60)) as ray_client, \
            CloudClient(ClientConfig(fmnist_cloud.address, timeout_s=60)) as plain_client:
        runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", ray_client)
        with torch.inference_mode():
            requests = [runner.prepare(Scheme.parse("3:16:4"), img)[0] for img in images]
        with ThreadPoolExecutor(16) as pool:
            ray_answers = list(pool.map(lambda r: ray_client.infer(r)[0], requests))
        plain_answers = [plain_client.infer(r)[0] for r in requests]
        wrong = pb.InferRequest.FromString(requests[0].SerializeToString())
        wrong.bank_scheme = "1:8:4"               # not the 3:16:4 map it carries: refused in the replica
        details = []
        for c in (ray_client, plain_client):
            with pytest.raises(grpc.RpcError) as refused:
                c.infer(wrong)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details.append(refused.value.details())
        assert details[0] == details[1] and "bank_scheme" in details[0]
    for r, p in zip(ray_answers, plain_answers):
        assert r.top1 == p.top1 and r.tail == p.tail
        np.testing.assert_allclose(r.logits, p.logits, atol=1e-4, rtol=0)   # batched convolutions round apart
    samples = scrape(ray_cloud.metrics_port)
    per_replica = {dict(labels)["replica"]: v for (name, labels), v in samples.items()
                   if name == "coinfer_replica_requests_total"}
    assert len(per_replica) == 2 and min(per_replica.values()) > 0, per_replica
    batched = {int(dict(labels)["batch_size"]): v for (name, labels), v in samples.items()
               if name == "coinfer_replica_batched_requests_total"}
    assert sum(batched.values()) == sum(per_replica.values())
    assert max(batched) > 1, batched
    assert value(samples, "coinfer_requests_total", method="Infer", code="OK") >= len(requests)


@pytest.mark.slow
@ray_installed
def test_sigterm_drains_exits_0_and_leaves_no_ray_process(ray_cloud):
    spawned = descendants(ray_cloud.proc.pid)
    assert len(spawned) >= 3, "expected the local Ray instance (gcs, raylet, workers) below the daemon"
    assert ray_cloud.stop() == 0
    deadline = time.monotonic() + 15
    while any(alive(p) for p in spawned) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in spawned if alive(p)}
    assert not left, f"left behind: {left}"


BLOCK_RAY = """
import sys
class BlockRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, BlockRay())
from cloud.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_engine_ray_without_ray_says_how_to_install_it():
    out = subprocess.run([sys.executable, "-c", BLOCK_RAY, "serve", "--port", "0", "--engine", "ray"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert out.returncode == 2, out.stderr
    assert "pip install 'opt-coinfer[ray]'" in out.stderr and "listening" not in out.stdout


def test_ray_flags_need_engine_ray():
    out = subprocess.run([sys.executable, "-m", "cloud", "serve", "--port", "0", "--replicas", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--replicas: only with --engine ray" in out.stderr


@pytest.mark.parametrize("text, says", [("coinfer", "expected a JSON object"), ('["coinfer"]', "JSON object"),
                                         ('{"coinfer": 0}', "'coinfer': expected a positive number"),
                                         ('{"coinfer": "1"}', "expected a positive number"),
                                         ('{"CPU": 1}', "custom resource names")])
def test_bad_replica_resources_exit_2_naming_the_flag(text, says):
    out = subprocess.run([sys.executable, "-m", "cloud", "serve", "--port", "0", "--engine", "ray",
                          "--replica-resources", text], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--replica-resources" in out.stderr and says in out.stderr, out.stderr
    assert "listening" not in out.stdout


def test_replica_resources_need_engine_ray():
    out = subprocess.run([sys.executable, "-m", "cloud", "serve", "--port", "0", "--replica-resources",
                          '{"coinfer": 1}'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--replica-resources: only with --engine ray" in out.stderr


@torch.inference_mode()
def test_batched_tails_equal_one_by_one():
    """LocalTails.run_batch (what each replica runs): equal keys share one batch, answers keep
    their order and equal the requests run alone."""
    model = build_model("fmnist-vgg")
    tails = LocalTails({"fmnist-vgg": ServedModel("fmnist-vgg", model, input_hw=model.spec.input_hw)})
    runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", None, use_bank=False)
    x, _ = load_fashion_mnist("test")
    schemes = ["1:8:4", "3:16:4", "1:8:4", "3:16:4", "1:8:4"]
    requests = [runner.prepare(Scheme.parse(s), img.numpy())[0] for s, img in zip(schemes, x[:5])]
    for i, r in enumerate(requests):
        r.request_id = f"r{i}"
    image = pb.InferRequest(request_id="img", model="fmnist-vgg", image=runner.prepare(
        Scheme.parse("cloud-only"), x[5].numpy())[0].image)
    batch = tails.run_batch([tails.prepare(r, r.ByteSize()) for r in [*requests, image]])
    assert [b for _, b in batch] == [3, 2, 3, 2, 3, 1]
    for (got, _), req in zip(batch, [*requests, image]):
        alone = tails.infer(req, req.ByteSize())
        assert got.request_id == req.request_id and got.top1 == alone.top1 and got.tail == alone.tail
        np.testing.assert_allclose(got.logits, alone.logits, atol=1e-4, rtol=0)
