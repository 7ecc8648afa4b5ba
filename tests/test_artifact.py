"""Scheme artifacts: round trip, weights-only format, clear errors."""
from __future__ import annotations

import pytest
import torch

from planner.artifact import ARTIFACT_FORMAT, ArtifactError, load_artifact, save_artifact
from planner.pruning import pruned_model
from planner.models import build_model, file_sha256
from planner.scheme import Scheme

MODEL = "fmnist-vgg"


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return build_model(MODEL, use_default_weights=False)


@pytest.mark.parametrize("scheme", ["0:1:1", "2:4:2", "5:128:8", "5:3:4"])
def test_round_trip(tmp_path, base_model, scheme):
    s = Scheme.parse(scheme)
    net, keep = pruned_model(base_model, s)
    path = tmp_path / "a.pt"
    sha = save_artifact(path, MODEL, s, keep, "ft0-seed0", net.state_dict())
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == ARTIFACT_FORMAT and raw["scheme"] == scheme
    assert raw["channel_indices"] == list(keep)
    art = load_artifact(path)
    assert art.scheme == s and art.channel_indices == keep and art.sha256 == sha == file_sha256(path)
    assert art.model_name == MODEL and art.recipe == "ft0-seed0" and not art.model.training
    x = torch.randn(3, 1, 28, 28)
    fm = art.model.head(x, s.partition)
    assert fm.shape[1] == s.channels
    assert torch.equal(art.model.tail(fm, s.partition), net.tail(net.head(x, s.partition), s.partition))


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nope.pt")


def test_plain_state_dict_is_not_an_artifact(tmp_path, base_model):
    torch.save(base_model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ArtifactError, match="expected format 'coinfer-artifact/1'"):
        load_artifact(tmp_path / "w.pt")


def test_garbage_file(tmp_path):
    (tmp_path / "g.pt").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="weights_only=True"):
        load_artifact(tmp_path / "g.pt")


def test_state_dict_that_does_not_fit_the_scheme(tmp_path, base_model):
    net, keep = pruned_model(base_model, Scheme.parse("1:4:2"))
    path = tmp_path / "a.pt"
    save_artifact(path, MODEL, Scheme.parse("1:4:2"), keep, "r", net.state_dict())
    obj = torch.load(path, weights_only=True)
    obj["scheme"], obj["channel_indices"] = "1:5:2", list(range(5))
    torch.save(obj, path)
    with pytest.raises(ArtifactError, match="does not fit fmnist-vgg with scheme 1:5:2"):
        load_artifact(path)


@pytest.mark.parametrize("indices", [[0, 1, 2], [3, 2, 1, 0], [0, 1, 2, 40]])
def test_bad_channel_indices_are_refused(tmp_path, base_model, indices):
    net, _ = pruned_model(base_model, Scheme.parse("1:4:2"))
    with pytest.raises(ArtifactError, match="channel indices"):
        save_artifact(tmp_path / "a.pt", MODEL, Scheme.parse("1:4:2"), indices, "r", net.state_dict())
