"""The lean device: `coinfer-plan export`, heads on ONNX Runtime, no torch on the device's path,
and the weights check on both ends."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest

from common import codec
from device.client import ClientConfig, CloudClient
from device.heads import Runtime, load_heads
from device.onnx_heads import ExportDirError, OnnxHeads
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.data import fashion_mnist_arrays
from planner.export import FORMAT, export_model
from planner.models import build_model, default_weights_path, file_sha256
from planner.pruning import channel_order
from planner.scheme import Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb
from tests.conftest import REPO

MODEL = "fmnist-vgg"
IMAGES = 100

# runs the device's CLI with torch (and torchvision, scipy, sklearn) unimportable, then
# reports which of them got loaded anyway
NO_TORCH = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = ("torch", "torchvision", "scipy", "sklearn")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    from device.__main__ import main
    rc = main(sys.argv[1:])
    print("LOADED " + json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))), file=sys.stderr)
    sys.exit(rc)
""")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    export_model(MODEL, out)
    return out


@pytest.fixture(scope="module")
def test_images():
    x, y = fashion_mnist_arrays("test")
    return x[:IMAGES], y[:IMAGES]


def run_device_without_torch(*args: str, cwd=REPO) -> tuple[subprocess.CompletedProcess, list[str]]:
    r = subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=cwd, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    loaded = [json.loads(line[len("LOADED "):]) for line in r.stderr.splitlines() if line.startswith("LOADED ")]
    return r, loaded[0] if loaded else None


def test_export_manifest_and_every_head_equal_torch(export_dir, test_images):
    manifest = json.loads((export_dir / "export.json").read_text())
    model = build_model(MODEL)
    assert manifest["format"] == FORMAT and manifest["model"] == MODEL
    assert manifest["weights_sha256"] == file_sha256(default_weights_path(model.spec))
    assert [p["index"] for p in manifest["partitions"]] == [p.index for p in model.partitions]
    onnx, torch_ = load_heads(Runtime.ONNX, MODEL, export=str(export_dir)), TorchHeads(model)
    assert onnx.weights_sha256 == manifest["weights_sha256"]
    images = test_images[0][:4]
    for p in model.partitions:
        assert onnx.order(p.index) == channel_order(model, p.index)
        assert onnx.partitions[p.index].shape == p.shape
        for img in images:
            np.testing.assert_allclose(onnx.head(img, p.index), torch_.head(img, p.index), atol=1e-4, rtol=1e-4)
    for img in images:
        np.testing.assert_allclose(onnx.logits(img), torch_.logits(img), atol=1e-4, rtol=1e-4)
    timed = onnx.timed_pass(images[0])
    assert len(timed.head_s) == len(model.partitions) and 0 < timed.head_s[0] <= timed.head_s[-1] <= timed.full_s


def test_an_altered_or_foreign_export_is_refused(export_dir, tmp_path):
    bad = tmp_path / "altered"
    shutil.copytree(export_dir, bad)
    data = bytearray((bad / "segment-02.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bad / "segment-02.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportDirError, match="segment-02.onnx has sha256"):
        OnnxHeads(bad)
    with pytest.raises(ExportDirError, match="no export.json"):
        OnnxHeads(tmp_path)
    with pytest.raises(ValueError, match="holds fmnist-vgg, not --model vgg16_bn"):
        load_heads(Runtime.ONNX, "vgg16_bn", export=str(export_dir))
    with pytest.raises(ValueError, match="takes the weights from --export"):
        load_heads(Runtime.ONNX, MODEL, export=str(export_dir), weights="x.pt")


def test_onnx_device_without_torch_answers_as_the_torch_device(export_dir, fmnist_cloud, test_images):
    """Against a real cloud: the same predictions, image by image, as the torch device, for
    device-only, a bank scheme, cloud-only and auto, with torch unimportable."""
    x, y = test_images
    client = CloudClient(ClientConfig(fmnist_cloud.address))
    try:
        torch_runner = DeviceRunner(TorchHeads(build_model(MODEL)), MODEL, client)
        for scheme in ("device-only", "1:8:4", "cloud-only", "auto"):
            r, loaded = run_device_without_torch(
                "infer", "--runtime", "onnx", "--export", str(export_dir), "--cloud", fmnist_cloud.address,
                "--scheme", scheme, "--dataset", "fashion-mnist", "--limit", str(IMAGES), "--json")
            assert r.returncode == 0, r.stderr[-2000:]
            assert loaded == [], f"{scheme}: loaded {loaded} on the ONNX path"
            lines = [json.loads(line) for line in r.stdout.splitlines()]
            frames, summary = lines[:-1], lines[-1]
            assert summary["images"] == IMAGES and summary["fallbacks"] == 0
            ran = Scheme.parse(summary["scheme"])
            expected = [torch_runner.run(Scheme.parse(f["scheme"]), x[i], int(y[i])).top1 for i, f in enumerate(frames)]
            assert [f["top1"] for f in frames] == expected, scheme
            if scheme == "1:8:4":
                assert summary["tail"] == "bank" and summary["top1_accuracy"] >= 0.85
            if scheme != "auto":
                assert str(ran) == scheme
    finally:
        client.close()


def test_without_torch_the_device_says_to_export(fmnist_cloud):
    r, loaded = run_device_without_torch("infer", "--dataset", "fashion-mnist", "--limit", "1")
    assert r.returncode == 2
    assert "torch is not installed here, so --runtime onnx needs --export DIR" in r.stderr
    assert loaded == []


def test_weights_mismatch_is_refused_by_device_and_cloud(export_dir, fmnist_cloud, tmp_path, test_images):
    other = tmp_path / "other"
    shutil.copytree(export_dir, other)
    manifest = json.loads((other / "export.json").read_text())
    served = manifest["weights_sha256"]
    manifest["weights_sha256"] = "0" * 64          # an export of other weights, as far as anyone can tell
    (other / "export.json").write_text(json.dumps(manifest))
    r, _ = run_device_without_torch("infer", "--runtime", "onnx", "--export", str(other), "--cloud",
                                    fmnist_cloud.address, "--scheme", "1:8:4", "--dataset", "fashion-mnist",
                                    "--limit", "1")
    assert r.returncode == 2, r.stderr
    assert served in r.stderr and "0" * 64 in r.stderr
    # the cloud refuses such a device's split frames on its own (a device that skipped the check)
    heads = OnnxHeads(other)
    client = CloudClient(ClientConfig(fmnist_cloud.address, weights_sha256=heads.weights_sha256))
    try:
        req, _, _, _ = DeviceRunner(heads, MODEL, client).prepare(Scheme.parse("1:8:4"), test_images[0][0])
        with pytest.raises(grpc.RpcError) as e:
            client.infer(req)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert served in e.value.details() and "0" * 64 in e.value.details()
        image_req = pb.InferRequest(request_id="img", model=MODEL, image=codec.encode_image(test_images[0][0]))
        assert client.infer(image_req)[0].top1 >= 0        # cloud-only frames carry no head: answered
    finally:
        client.close()


@pytest.mark.slow
def test_make_device_venv_installs_a_device_without_torch(export_dir, fmnist_cloud, tmp_path):
    """`make device-venv` from scratch: `.[device]` without torch, and its coinfer-device runs a
    bank scheme against the real cloud from outside the repository."""
    venv = tmp_path / "venv"
    build = tmp_path / "src"            # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO, build, ignore=shutil.ignore_patterns(".venv*", ".git", "build", "*.egg-info",
                                                               "__pycache__", ".pytest_cache", ".hypothesis"))
    r = subprocess.run(["make", "device-venv", f"DEVICE_VENV={venv}", f"PYTHON={sys.executable}"], cwd=build,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "no torch" in r.stdout
    py = venv / "bin" / "python"
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in "
                            "('torch', 'torchvision', 'scipy', 'sklearn') if u.find_spec(m)])"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(venv / "bin" / "coinfer-device"), "infer", "--export", str(export_dir), "--cloud",
                        fmnist_cloud.address, "--scheme", "1:8:4", "--dataset", "fashion-mnist", "--limit", "50",
                        "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["images"] == 50 and summary["tail"] == "bank" and summary["top1_accuracy"] >= 0.8
