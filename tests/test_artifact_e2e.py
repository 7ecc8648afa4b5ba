"""Device and cloud run the same fine-tuned artifact; a different one is refused."""
from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest
import torch

from common import codec
from device.client import ClientConfig, CloudClient
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.accuracy_db import AccuracyDB
from planner.artifact import load_artifact
from planner.data import load_fashion_mnist
from planner.evaluate import evaluate
from planner.models import build_model
from planner.scheme import Scheme
from tests.conftest import REPO, CloudProcess


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("artifacts")
    with AccuracyDB(d / "db.sqlite") as db:
        recs = [evaluate("fmnist-vgg", Scheme.parse(s), 0.02, db, train_limit=256, test_limit=128,
                         artifact_dir=d, progress=False).record for s in ("2:8:4", "4:16:2")]
    return [load_artifact(r.artifact_path) for r in recs]


@pytest.fixture(scope="module")
def artifact_cloud(artifacts):
    cloud = CloudProcess("--model", "fmnist-vgg", "--profile-repeats", "0", "--artifact", str(artifacts[0].path))
    yield cloud
    assert cloud.stop() == 0


def test_same_artifact_answers_equal_in_process(artifact_cloud, artifacts):
    art = artifacts[0]
    images = load_fashion_mnist("test")[0][:16].numpy()
    with CloudClient(ClientConfig(artifact_cloud.address)) as c:
        info = c.server_info().models[0]
        assert [a.sha256 for a in info.artifacts] == [art.sha256]
        runner = DeviceRunner(TorchHeads(build_model("fmnist-vgg")), "fmnist-vgg", c, artifact=art)
        for img in images:
            req = runner.prepare(art.scheme, img)[0]
            assert req.artifact_sha256 == art.sha256 and req.feature_map.channels == art.scheme.channels
            resp, _ = c.infer(req)
            enc = codec.feature_map_from_proto(req.feature_map)
            _, h, w = runner.heads_for(art.scheme).model.head(torch.zeros(1, 1, 28, 28), 2).shape[1:]
            fm = codec.decode_feature_map(enc, total_channels=art.scheme.channels, height=h, width=w)
            with torch.inference_mode():
                local = art.model.tail(torch.from_numpy(fm).unsqueeze(0), 2)[0].numpy()
            np.testing.assert_allclose(np.array(resp.logits), local, atol=1e-5, rtol=0)


def test_other_artifact_is_refused_naming_both_hashes(artifact_cloud, artifacts):
    served, other = artifacts
    out = subprocess.run([sys.executable, "-m", "device", "infer", "--cloud", artifact_cloud.address,
                          "--artifact", str(other.path), "--scheme", str(other.scheme),
                          "--dataset", "fashion-mnist", "--limit", "2"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "FAILED_PRECONDITION" in out.stderr
    assert other.sha256 in out.stderr and served.sha256 in out.stderr


def test_artifact_scheme_mismatch_on_the_device_is_named(artifacts):
    art = artifacts[0]
    out = subprocess.run([sys.executable, "-m", "device", "infer", "--artifact", str(art.path),
                          "--scheme", "2:8:8", "--cloud", "127.0.0.1:1", "--dataset", "fashion-mnist",
                          "--limit", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "differs from the artifact's 2:8:4" in out.stderr


def test_wrong_bits_for_the_artifact_is_invalid(artifact_cloud, artifacts):
    art = artifacts[0]
    img = load_fashion_mnist("test")[0][0].numpy()
    with CloudClient(ClientConfig(artifact_cloud.address)) as c:
        req = DeviceRunner(TorchHeads(build_model("fmnist-vgg")), "fmnist-vgg", c, artifact=art).prepare(art.scheme, img)[0]
        fm = art.model.head(art.model.preprocess(torch.from_numpy(img).unsqueeze(0)), 2)[0].detach().numpy()
        req.feature_map.CopyFrom(codec.feature_map_to_proto(codec.encode_feature_map(fm, 2, None, 8)))
        with pytest.raises(grpc.RpcError) as err:
            c.infer(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "feature_map.bits" in err.value.details()
