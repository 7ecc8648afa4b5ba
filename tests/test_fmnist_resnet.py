"""fmnist-resnet, the shipped residual network: its cuts from the torch.fx finder, scheme
evaluation by masking at the cut, and a bank built on a small slice, served by a real cloud
and run through a split scheme."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from common import codec
from device.client import ClientConfig, CloudClient
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.accuracy_db import AccuracyDB
from planner.bank import BankTail, load_bank, read_manifest
from planner.bank_build import BankBuildConfig, build_bank
from planner.data import load_fashion_mnist
from planner.evaluate import evaluate
from planner.models import build_model, default_weights_path, file_sha256, get_spec, partition_table
from planner.pruning import select_channels
from planner.scheme import Scheme
from tests.conftest import REPO, CloudProcess

MODEL = "fmnist-resnet"
BLOCKS = [f"layer{i}_{j}_relu_1" for i in range(1, 5) for j in range(2)]
# an entry that owns a residual block with a strided projection, and one that owns the classifier
SCHEMES = [Scheme.parse("2:4:2"), Scheme.parse("8:8:2")]
SMALL = BankBuildConfig(epochs=1.0, train_limit=256, test_limit=100, threads=1)


@pytest.fixture(scope="module")
def model():
    if default_weights_path(get_spec(MODEL)) is None:
        pytest.fail("planner/weights/fmnist-resnet.pt is missing: `coinfer-plan train --model fmnist-resnet`")
    return build_model(MODEL)


@pytest.fixture(scope="module")
def images():
    x, y = load_fashion_mnist("test")
    return x[:64], y[:64]                         # (64, 1, 28, 28) uint8, (64,) int64


def test_cut_table_comes_from_the_finder_at_stem_and_block_outputs(model):
    table = partition_table(model.spec)
    assert [p.node for p in table] == ["relu", *BLOCKS]
    assert [p.shape for p in table] == [(16, 28, 28), (16, 28, 28), (16, 28, 28), (32, 14, 14), (32, 14, 14),
                                        (64, 7, 7), (64, 7, 7), (128, 4, 4), (128, 4, 4)]
    # the stem is a conv+BN output (BN-folded); block outputs are residual sums (measured)
    assert [model.ranking(p.index) for p in table] == ["bn-folded"] + ["mean-abs-activation"] * 8
    assert model.orders_source.endswith(".channel-order.json"), "the shipped weights' recorded orders"


@torch.inference_mode()
def test_tail_of_head_equals_the_model_at_every_cut(model, images):
    x = model.preprocess(images[0])
    expected = model(x)
    for part in model.partitions:
        fm = model.head(x, part.index)
        assert tuple(fm.shape[1:]) == part.shape
        assert float((model.tail(fm, part.index) - expected).abs().max()) <= 1e-5, part


def test_evaluate_masks_the_cut_like_the_codec_and_records_the_row(model, images, tmp_path):
    scheme = Scheme.parse("3:4:2")
    with AccuracyDB(tmp_path / "db.sqlite") as db:
        ev = evaluate(MODEL, scheme, 0.0, db, test_limit=64, progress=False)
        row = db.get(MODEL, "fashion-mnist", "3:4:2", "ft0-seed0-test64")
    assert row is not None and row.top1_error == ev.record.top1_error and row.artifact_path is None
    keep = select_channels(model, 3, 4)
    assert ev.channel_indices == keep
    # what the cloud's unmodified tail computes on the decoded frames
    c, h, w = model.partitions[3].shape
    with torch.inference_mode():
        fms = model.head(model.preprocess(images[0]), 3).numpy()
        decoded = np.stack([codec.decode_feature_map(
            codec.encode_feature_map(fm, 3, np.array(keep), 2), c, h, w) for fm in fms])
        logits = model.tail(torch.from_numpy(decoded), 3)
    np.testing.assert_allclose(ev.logits.numpy(), logits.numpy(), atol=1e-4, rtol=0)
    assert ev.record.top1_error == pytest.approx(float((logits.argmax(1) != images[1]).float().mean()))


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory, model):
    d = tmp_path_factory.mktemp("resnet-bank")
    with AccuracyDB(d / "db.sqlite") as db:
        build_bank(MODEL, d / "bank", SCHEMES, db, SMALL, progress=False)
    return d


@torch.inference_mode()
def test_untuned_bank_tail_is_the_unmodified_tail_and_the_built_one_is_tuned(model, bank_dir, images):
    x = model.preprocess(images[0][:4])
    sha = file_sha256(default_weights_path(get_spec(MODEL)))
    loaded = load_bank(bank_dir / "bank", model, MODEL, sha)
    assert set(loaded.tails) == set(SCHEMES)
    for s in SCHEMES:
        keep = select_channels(model, s.partition, s.channels)
        fm = model.head(x, s.partition)
        zero_filled = torch.zeros_like(fm)
        zero_filled[:, list(keep)] = fm[:, list(keep)]
        untuned = BankTail(model, s.partition, keep).eval()
        torch.testing.assert_close(untuned(zero_filled), model.tail(zero_filled, s.partition), atol=1e-5, rtol=0)
        tuned = loaded.tails[s]
        assert tuned.layer.prefix == f"segment.{s.partition + 1}"          # the segment after the cut
        assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), untuned.state_dict().values()))
    # an entry is the owned segment only: the classifier's is a Linear(128, 10) and a few bytes more
    m = read_manifest(bank_dir / "bank")
    obj = torch.load(bank_dir / "bank" / m.entry(SCHEMES[1]).file, weights_only=True)
    assert sum(v.numel() for v in obj["state_dict"].values()) == 128 * 10 + 10


def test_bank_served_by_a_real_cloud_runs_the_split_scheme(model, bank_dir, images):
    m = read_manifest(bank_dir / "bank")
    cloud = CloudProcess("--model", MODEL, "--profile-repeats", "0", "--bank", str(bank_dir / "bank"))
    try:
        with CloudClient(ClientConfig(cloud.address)) as client:
            info = next(i for i in client.server_info().models if i.name == MODEL)
            assert {b.scheme for b in info.bank} == {str(s) for s in SCHEMES}
            assert info.bank_recipe == m.recipe and info.weights_sha256 == m.weights_sha256
            loaded = load_bank(bank_dir / "bank", model, MODEL, m.weights_sha256)
            runner = DeviceRunner(TorchHeads(model), MODEL, client)
            s = SCHEMES[0]
            c, h, w = model.partitions[s.partition].shape
            for img in images[0][:3].numpy():
                req = runner.prepare(s, img)[0]
                resp, _ = client.infer(req)
                fm = codec.decode_feature_map(codec.feature_map_from_proto(req.feature_map), c, h, w)
                with torch.inference_mode():
                    want = loaded.tails[s](torch.from_numpy(fm).unsqueeze(0))[0].numpy()
                np.testing.assert_allclose(np.array(resp.logits), want, atol=1e-4, rtol=0)
        r = subprocess.run([sys.executable, "-m", "device", "infer", "--cloud", cloud.address, "--model", MODEL,
                            "--scheme", str(s), "--dataset", "fashion-mnist", "--limit", "4", "--json", "--quiet"],
                           cwd=REPO, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["tail"] == "bank" and summary["scheme"] == str(s) and summary["images"] == 4
    finally:
        assert cloud.stop() == 0


def test_the_trainer_trains_a_graph_model_on_a_small_slice(tmp_path):
    from planner.train import TrainConfig, train_model, train_record
    cfg = TrainConfig(epochs=1.0, batch_size=64, train_limit=128, threads=1)
    result = train_model(MODEL, cfg, out=tmp_path / "r.pt", test_limit=64, progress=False, command="test")
    assert result.test_size == 64 and 0.0 <= result.top1_accuracy <= 1.0
    trained = build_model(MODEL, weights=tmp_path / "r.pt")           # loads strictly into the same graph
    scratch = build_model(MODEL, use_default_weights=False)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), scratch.state_dict().values()))
    assert train_record(result)["machine"]["cores_allowed"] >= 1


def test_an_artifact_dir_for_a_graph_model_is_refused_by_name(tmp_path, capsys):
    from planner.__main__ import main
    rc = main(["evaluate", "--model", MODEL, "--scheme", "3:4:2", "--finetune-epochs", "0", "--test-limit", "8",
               "--artifact-dir", str(tmp_path / "art"), "--db", str(tmp_path / "db.sqlite")])
    assert rc == 2 and "fmnist-resnet is a graph model" in capsys.readouterr().err
    assert not (tmp_path / "db.sqlite").exists()
