"""Split exactness: the lossless split equals the unsplit model, for every model and partition."""
from __future__ import annotations

import pytest
import torch

from common import codec
from planner.pruning import select_channels
from planner.models import BuilderKind, build_model, get_spec, model_names, partition_shapes, partition_table

# small inputs keep vgg16_bn quick; the partition table does not depend on the input size.
# The VGG-cfg models; torchvision-graph models are split in tests/test_graph_cuts.py
VGG_NAMES = model_names(BuilderKind.VGG_CFG)
SMALL_HW = {"fmnist-vgg": (28, 28), "vgg11_bn": (32, 32), "vgg16_bn": (32, 32)}
CASES = [(name, p.index) for name in VGG_NAMES for p in partition_table(get_spec(name))]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_model(name, use_default_weights=name != "fmnist-vgg") for name in VGG_NAMES}


@pytest.mark.parametrize("name,p", CASES, ids=[f"{n}-P{p}" for n, p in CASES])
@torch.inference_mode()
def test_lossless_split_equals_unsplit(models, name, p):
    model = models[name]
    gen = torch.Generator().manual_seed(p)
    x = torch.randn(2, model.spec.in_channels, *SMALL_HW[name], generator=gen)
    expected = model(x)
    for i in range(len(x)):
        fm = model.head(x[i:i + 1], p)[0].numpy()
        enc = codec.encode_feature_map(fm, p, None, None)          # float32 reference mode
        msg = codec.feature_map_from_proto(codec.feature_map_to_proto(enc))
        c, h, w = fm.shape
        decoded = codec.decode_feature_map(msg, total_channels=c, height=h, width=w)
        got = model.tail(torch.from_numpy(decoded).unsqueeze(0), p)[0]
        assert torch.allclose(got, expected[i], atol=1e-4, rtol=0), (got - expected[i]).abs().max()


@pytest.mark.parametrize("name", VGG_NAMES)
def test_partition_shapes_match_the_head(models, name):
    model = models[name]
    x = torch.zeros(1, model.spec.in_channels, *SMALL_HW[name])
    shapes = partition_shapes(model.spec, SMALL_HW[name])
    with torch.inference_mode():
        for p, shape in enumerate(shapes):
            assert tuple(model.head(x, p).shape[1:]) == shape


def test_vgg16_partition_table_matches_the_seed_profile():
    """The seed's 13 partitions: widths, pooling and 224x224 shapes (shared/seed/README.md)."""
    parts = partition_table(get_spec("vgg16_bn"))
    shapes = partition_shapes(get_spec("vgg16_bn"))
    assert [p.channels for p in parts] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert [p.index for p in parts if p.after_pooling] == [1, 3, 6, 9, 12]
    assert [s[1] for s in shapes] == [224, 112, 112, 56, 56, 56, 28, 28, 28, 14, 14, 14, 7]


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="Unknown model 'resnet'.*fmnist-vgg.*vgg16_bn"):
        get_spec("resnet")


def test_kept_channels_are_the_most_important(models):
    model = models["fmnist-vgg"]
    kept = select_channels(model, 2, 8)
    assert list(kept) == sorted(kept) and len(set(kept)) == 8
    conv, bn = model.features[7], model.features[8]          # conv 2 of the fmnist table
    score = bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps) * conv.weight.abs().sum(dim=(1, 2, 3))
    assert set(kept) == set(torch.topk(score, 8).indices.tolist())
    with pytest.raises(ValueError, match="1..64"):
        select_channels(model, 2, 65)


@pytest.mark.slow
def test_dataparallel_checkpoint_with_other_class_count_loads(tmp_path):
    src = build_model("vgg11_bn", num_classes=196, use_default_weights=False)
    path = tmp_path / "dp.pt"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)
    loaded = build_model("vgg11_bn", num_classes=196, weights=path)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x), src(x))
    with pytest.raises(ValueError, match="--num-classes"):
        build_model("vgg11_bn", weights=path)              # 1000-class head does not fit
