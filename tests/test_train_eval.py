"""Training loop, pruning, the fake quantizer and scheme evaluation, on small subsets."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from planner import train_cli
from planner.accuracy_db import BASE_SCHEME, AccuracyDB
from planner.artifact import load_artifact
from planner.data import DatasetUnavailable
from planner.evaluate import (SchemeNet, evaluate, evaluate_scheme, fake_quantize, grid_schemes,
                              quantize_dequantize)
from planner.models import build_model, get_spec, partition_table
from planner.pruning import channel_importance, pruned_model, select_channels
from planner.scheme import Scheme, SchemeError
from planner.train import TrainConfig, augment_batch, fit, load_dataset, train_model

MODEL = "fmnist-vgg"
PARTITIONS = [p.index for p in partition_table(get_spec(MODEL))]


def _random_model(seed: int = 0):
    """Random weights with non-trivial BN statistics, so pruning has something to get wrong."""
    torch.manual_seed(seed)
    m = build_model(MODEL, use_default_weights=False)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(-1.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _random_model()


@pytest.fixture(scope="module")
def fmnist_small():
    try:
        return load_dataset("fashion-mnist", "train", 256), load_dataset("fashion-mnist", "test", 200)
    except DatasetUnavailable as e:
        pytest.skip(str(e))


# -- pruning ------------------------------------------------------------------------------
@pytest.mark.parametrize("p", PARTITIONS)
def test_pruning_keeps_exactly_the_selected_channels(model, p):
    scheme = Scheme.split(p, 5, 4)
    net, keep = pruned_model(model, scheme)
    assert keep == select_channels(model, p, 5) and list(keep) == sorted(set(keep)) and len(keep) == 5
    convs = [p.conv_feature for p in model.partitions]
    k, idx = convs[p], list(keep)
    assert torch.equal(net.features[k].weight, model.features[k].weight[idx])
    assert torch.equal(net.features[k + 1].running_var, model.features[k + 1].running_var[idx])
    if p + 1 < len(convs):
        assert torch.equal(net.features[convs[p + 1]].weight, model.features[convs[p + 1]].weight[:, idx])
    assert net.partition(p).channels == 5 and net.head(torch.zeros(1, 1, 28, 28), p).shape[1] == 5


@pytest.mark.parametrize("p", PARTITIONS)
@pytest.mark.parametrize("c", [1, 7])
def test_pruned_network_equals_zero_filled_unmodified_network(model, p, c):
    scheme = Scheme.split(p, c, 8)
    net, keep = pruned_model(model, scheme)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        fm = model.head(x, p)
        mask = torch.zeros(fm.shape[1], dtype=torch.bool)
        mask[list(keep)] = True
        zero_filled = model.tail(fm * mask[None, :, None, None], p)
        pruned = net.tail(net.head(x, p), p)
        assert torch.equal(net.head(x, p), fm[:, list(keep)])
    torch.testing.assert_close(pruned, zero_filled, rtol=1e-5, atol=1e-5)


def test_importance_is_the_bn_folded_filter_l1_norm(model):
    m = _random_model(1)
    k = m.partition(2).conv_feature
    m.features[k + 1].weight.data.fill_(1e-3)
    m.features[k + 1].weight.data[[9, 40, 17]] = 10.0  # these three dominate
    assert select_channels(m, 2, 3) == (9, 17, 40)
    imp = channel_importance(m, 2)
    bn = m.features[k + 1]
    expected = bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps) * m.features[k].weight.abs().sum((1, 2, 3))
    torch.testing.assert_close(imp, expected.detach())


def test_channels_beyond_the_width_are_refused(model):
    with pytest.raises(SchemeError, match="expected channels C in 1..32"):
        pruned_model(model, Scheme.parse("0:33:4"))


def test_grid_is_every_partition_c_and_b():
    schemes = grid_schemes(MODEL)
    assert len(schemes) == len(PARTITIONS) * 6 * 4 == 144
    assert Scheme.parse("5:128:8") in schemes and Scheme.parse("0:32:1") in schemes


# -- fake quantizer ----------------------------------------------------------------------------
def _codec_reference(x: np.ndarray, bits: int) -> np.ndarray:
    """The codec's math written out per sample and channel, in float32 numpy."""
    out = np.empty_like(x)
    levels = 2 ** bits - 1
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            v = x[n, c]
            lo, hi = v.min(), v.max()
            scale = np.float32((hi - lo) / np.float32(levels))
            code = np.zeros_like(v) if scale == 0 else np.clip(np.round((v - lo) / scale), 0, levels)
            out[n, c] = lo + code.astype(np.float32) * scale
    return out


@pytest.mark.parametrize("bits", range(1, 9))
def test_fake_quantizer_is_the_codec_math(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(3, 4, 7, 7, generator=g) * 3
    x[1, 2] = 0.7  # a constant channel
    x[2, 0] = torch.relu(x[2, 0])  # a ReLU output with many zeros
    q = quantize_dequantize(x, bits)
    np.testing.assert_array_equal(q.numpy(), _codec_reference(x.numpy(), bits))
    assert torch.all(q[1, 2] == 0.7)
    # at most 2**B distinct values per sample and channel
    assert max(q[n, c].unique().numel() for n in range(3) for c in range(4)) <= 2 ** bits


@pytest.mark.parametrize("bits", range(1, 9))
def test_fake_quantizer_equals_device_codec_round_trip(bits):
    codec = pytest.importorskip("common.codec")
    g = torch.Generator().manual_seed(100 + bits)
    x = torch.relu(torch.randn(3, 6, 7, 7, generator=g) * 2)
    x[0, 1] = 0.0  # a constant (dead) channel
    q = quantize_dequantize(x, bits)
    for n in range(x.shape[0]):
        codes, offsets, scales = codec.quantize(x[n].numpy(), bits)
        np.testing.assert_array_equal(codec.dequantize(codes, offsets, scales), q[n].numpy())


def test_straight_through_gradient_is_identity():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = fake_quantize(x, 2)
    assert torch.equal(y, quantize_dequantize(x.detach(), 2))
    (y * torch.arange(96.0).view(2, 3, 4, 4)).sum().backward()
    assert torch.equal(x.grad, torch.arange(96.0).view(2, 3, 4, 4))


# -- training loop -------------------------------------------------------------------------------
def test_augmentation_is_a_shifted_or_flipped_copy():
    x = torch.arange(2 * 28 * 28, dtype=torch.int64).view(2, 1, 28, 28).to(torch.uint8)
    out = augment_batch(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment_batch(x, 2, torch.Generator().manual_seed(0)))
    no_pad = augment_batch(x, 0, torch.Generator().manual_seed(3))
    for n in range(2):
        assert torch.equal(no_pad[n], x[n]) or torch.equal(no_pad[n], x[n].flip(-1))


def test_fit_is_deterministic_given_the_seed(fmnist_small):
    (x, y), _ = fmnist_small
    cfg = TrainConfig(epochs=0.5, batch_size=64, seed=3)  # 2 steps
    states = []
    for _ in range(2):
        m = _random_model(2)
        fit(m, m.preprocess, x, y, cfg, progress=False)
        states.append(m.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["features.0.weight"], _random_model(2).state_dict()["features.0.weight"])


def test_train_model_writes_loadable_weights(tmp_path, fmnist_small):
    res = train_model(MODEL, TrainConfig(epochs=0.5, train_limit=256), out=tmp_path / "w.pt",
                      test_limit=200, progress=False, command="test")
    assert res.test_size == 200 and 0.0 <= res.top1_accuracy <= 1.0
    m = build_model(MODEL, weights=res.weights_path)
    assert m(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


# -- evaluation -----------------------------------------------------------------------------------
@pytest.fixture()
def weights_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(_random_model(4).state_dict(), path)
    return path


def test_evaluation_writes_row_and_artifact_that_reproduces_it(tmp_path, fmnist_small, weights_file):
    _, (x_test, _) = fmnist_small
    scheme = Scheme.parse("3:2:2")
    with AccuracyDB(tmp_path / "acc.sqlite") as db:
        ev = evaluate(MODEL, scheme, 0.5, db, seed=0, train_limit=256, test_limit=200,
                      artifact_dir=tmp_path / "art", weights=weights_file, progress=False)
        row = db.get(MODEL, "fashion-mnist", "3:2:2", ev.record.recipe)
        base = db.base_error(MODEL, "fashion-mnist")
        assert db.get(MODEL, "fashion-mnist", BASE_SCHEME) is not None
    assert row is not None and row.top1_error == ev.record.top1_error and row.test_size == 200
    assert row.recipe == "ft0.5-seed0-train256-test200"
    assert math.isclose(ev.accuracy_loss, row.top1_error - base)
    art = load_artifact(row.artifact_path)
    assert art.sha256 == row.artifact_sha256 and art.scheme == scheme
    assert art.channel_indices == ev.channel_indices
    with torch.no_grad():
        logits = SchemeNet(art.model, scheme)(art.model.preprocess(x_test))
        by_hand = art.model.tail(quantize_dequantize(art.model.head(art.model.preprocess(x_test), 3), 2), 3)
    assert torch.equal(logits, ev.logits) and torch.equal(by_hand, ev.logits)
    # fine-tuning changed the weights: the artifact is not the plain pruned network
    plain, _ = pruned_model(build_model(MODEL, weights=weights_file), scheme)
    k = plain.partition(3).conv_feature
    assert not torch.equal(plain.features[k].weight, art.model.features[k].weight)


def test_evaluate_scheme_without_finetuning_matches_pruned_network(tmp_path, fmnist_small, weights_file,
                                                                   monkeypatch):
    _, (x_test, y_test) = fmnist_small
    monkeypatch.setattr("planner.evaluate.default_weights_path", lambda spec: weights_file)
    with AccuracyDB(tmp_path / "acc.sqlite") as db:
        rec = evaluate_scheme(MODEL, Scheme.parse("5:128:8"), 0, db, test_limit=200,
                              artifact_dir=tmp_path / "art")
    net, keep = pruned_model(build_model(MODEL, weights=weights_file), Scheme.parse("5:128:8"))
    assert keep == tuple(range(128))
    with torch.no_grad():
        wrong = int((SchemeNet(net, Scheme.parse("5:128:8"))(net.preprocess(x_test)).argmax(1)
                     != y_test).sum())
    expected = wrong / 200
    assert rec.top1_error == expected and rec.recipe == "ft0-seed0-test200"


def test_cli_evaluate_json(tmp_path, fmnist_small, weights_file, capsys):
    from planner.__main__ import main
    rc = main(["evaluate", "--model", MODEL, "--scheme", "1:4:1", "--finetune-epochs", "0.25",
               "--train-limit", "256", "--test-limit", "200", "--db", str(tmp_path / "d.sqlite"),
               "--weights", str(weights_file), "--artifact-dir", str(tmp_path), "--no-progress", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["scheme"] == "1:4:1" and len(out["channel_indices"]) == 4
    assert math.isclose(out["accuracy_loss"], out["top1_error"] - out["base_error"])
    assert out["seconds"] > 0 and out["test_size"] == 200
    # the subcommand ran through train_cli, the module that defines it (planner/__main__.py's table)
    from planner.__main__ import build_parser
    args = build_parser().parse_args(["evaluate", "--model", MODEL, "--scheme", "1:4:1"])
    assert args.func is train_cli._evaluate
