"""Cut points found from the graph (planner.graph): for every torchvision architecture in the
registry, every cut's tail(head(x)) is the model's output; the finder yields VGG's own table;
and a resnet18 split over a real gRPC link answers as the local model does."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from planner.graph import GraphCutError, find_cuts, single_live_values, slice_graph, trace
from planner.models import BuilderKind, build_model, get_spec, model_names, partition_table

SMALL_HW = (64, 64)              # the graph models' cuts at 64x64 end at 2x2: quick, and every block runs
GRAPH_NAMES = model_names(BuilderKind.TORCHVISION_GRAPH)
TOLERANCE = 1e-5                 # max abs difference of logits allowed (the same ops in the same order: 0)
# the architectures the issue names run by default; the rest of the registry's are marked slow
NAMED = {"fmnist-resnet", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2", "mobilenet_v3_small",
         "mobilenet_v3_large", "efficientnet_b0"}
GRAPH_CASES = [name if name in NAMED else pytest.param(name, marks=pytest.mark.slow) for name in GRAPH_NAMES]


class _Models(dict):
    """Models built on first use (a module-wide cache)."""

    def __missing__(self, name: str):
        self[name] = build_model(name)
        return self[name]


@pytest.fixture(scope="module")
def graph_models():
    return _Models()


def test_the_registry_names_the_torchvision_architectures():
    assert set(GRAPH_NAMES) >= NAMED


@pytest.mark.parametrize("name", GRAPH_CASES)
@torch.inference_mode()
def test_every_cut_tail_of_head_equals_the_model(graph_models, name):
    model = graph_models[name]
    x = torch.randn(2, model.spec.in_channels, *SMALL_HW, generator=torch.Generator().manual_seed(0))
    expected = model(x)
    table = partition_table(model.spec, SMALL_HW)
    assert len(table) == len(model.partitions) >= 5
    diffs = []
    for part in table:
        fm = model.head(x, part.index)
        assert tuple(fm.shape[1:]) == part.shape, (name, part)
        diffs.append(float((model.tail(fm, part.index) - expected).abs().max()))
    print(f"{name}: {len(table)} cuts, max abs difference {max(diffs):.3g}")
    assert max(diffs) <= TOLERANCE, dict(zip([p.node for p in table], diffs))


def test_residual_nets_cut_at_stem_and_block_outputs_only(graph_models):
    model = graph_models["resnet18"]
    nodes = [p.node for p in model.partitions]
    blocks = [f"layer{i}_{j}_relu_1" for i in range(1, 5) for j in range(2)]
    assert nodes == ["maxpool", *blocks]
    assert [p.channels for p in model.partitions] == [64, 64, 64, 128, 128, 256, 256, 512, 512]
    # inside a residual block two tensors are alive: the block's input and its branch
    gm = model.graph_module
    single = {n.name for n in single_live_values(gm)}
    assert "layer1_0_conv1" not in single and "layer1_0_bn2" not in single and "layer1_0_relu_1" in single


def test_a_permuted_layout_is_no_cut(graph_models):
    """convnext_tiny's LayerNorm2d runs in (N, H, W, C): nothing inside it is listed, only (N, C, H, W) values."""
    model = graph_models["convnext_tiny"]
    assert {p.channels for p in model.partitions} == {96, 192, 384, 768}
    gm = model.graph_module
    single = {n.name for n in single_live_values(gm)}
    inside = {"permute", "layer_norm", "permute_8", "layer_norm_1"}          # the stem's and a downsample's norm
    assert inside <= single and not inside & {p.node for p in model.partitions}   # one live value, yet no cut
    assert {"permute_1", "permute_9"} <= {p.node for p in model.partitions}       # permuted back: cuts


def test_fx_finder_yields_vggs_own_table():
    """vgg16_bn traced with torch.fx: the same cuts (shapes, pooling) as the cfg walk, in its numbering."""
    model = build_model("vgg16_bn", use_default_weights=False)
    cuts = find_cuts(trace(model), torch.zeros(1, 3, 224, 224))
    table = partition_table(get_spec("vgg16_bn"))
    assert [c.shape for c in cuts] == [p.shape for p in table]
    assert [c.pooled for c in cuts] == [p.after_pooling for p in table]
    assert [c.node for c in cuts] == [p.node for p in table] == [f"features_{p.feature_end - 1}" for p in table]
    assert all(c.conv_bn == (f"features.{p.conv_feature}", f"features.{p.conv_feature + 1}")
               for c, p in zip(cuts, table))        # BN-folded ranking applies at every VGG cut


def test_slicing_elsewhere_than_a_cut_is_refused(graph_models):
    gm = graph_models["resnet18"].graph_module
    with pytest.raises(GraphCutError, match="crosses the cut"):
        slice_graph(gm, "layer1_0_conv1", None)(torch.zeros(1, 64, 16, 16))
    with pytest.raises(GraphCutError, match="no node 'nope'"):
        slice_graph(gm, "nope", None)


@torch.inference_mode()
def test_seeded_random_init_is_the_same_in_two_builds_and_weights_load(tmp_path):
    a, b = build_model("resnet18", num_classes=7), build_model("resnet18", num_classes=7)
    x = torch.randn(1, 3, *SMALL_HW)
    assert torch.equal(a(x), b(x))
    import torchvision
    ref = torchvision.models.resnet18(num_classes=7).eval()
    path = tmp_path / "dp.pt"
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, path)   # nn.DataParallel's keys
    loaded = build_model("resnet18", num_classes=7, weights=path)
    assert torch.equal(loaded(x), ref(x))
    p = loaded.partitions[3].index
    assert torch.equal(loaded.tail(loaded.head(x, p), p), ref(x))
    with pytest.raises(ValueError, match="--num-classes"):
        build_model("resnet18", weights=path)                # the 1000-class head does not fit


def test_channel_ranking_bn_folded_where_it_applies(graph_models):
    model = graph_models["mobilenet_v2"]
    kinds = {p.node: model.ranking(p.index) for p in model.partitions}
    assert kinds["features_1_conv_2"] == "bn-folded"           # projection conv + BN, no residual
    assert kinds["add"] == "mean-abs-activation"               # a residual sum
    order = model.channel_order(6)
    assert sorted(order) == list(range(model.partitions[6].channels))
    assert order == build_model("mobilenet_v2").channel_order(6)   # the other end computes the same


@pytest.mark.parametrize("name", ["resnet18", "fmnist-vgg"])
def test_the_devices_timed_pass_goes_through_every_cut(name):
    """device.torch_heads' one pass through the segments: a map per cut equal to head(P)."""
    from device.torch_heads import TorchHeads
    heads = TorchHeads(build_model(name, use_default_weights=False))
    c = heads.spec.in_channels
    img = np.random.default_rng(2).integers(0, 256, (c, *(SMALL_HW if c == 3 else (28, 28))), dtype=np.uint8)
    tp = heads.timed_pass(img)
    assert [p for p, _ in tp.maps] == [p.index for p in heads.partitions]
    for p, fm in tp.maps:
        np.testing.assert_array_equal(fm, heads.head(img, p))
    assert all(a <= b for a, b in zip(tp.head_s, tp.head_s[1:] + [tp.full_s]))


def run_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=120)


def test_partitions_command_lists_the_finders_cuts():
    r = run_plan("partitions", "--model", "resnet18", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["model"] == "resnet18"
    parts = doc["partitions"]
    assert [p["index"] for p in parts] == list(range(9))
    assert parts[0] == {"index": 0, "name": "maxpool", "shape": [64, 56, 56]}
    assert parts[-1]["shape"] == [512, 7, 7]
    assert "random init: timing only" in r.stdout


def test_partitions_command_keeps_vggs_numbering_and_refuses_unknown_names():
    r = run_plan("partitions", "--model", "vgg16_bn", "--json")
    assert r.returncode == 0, r.stderr
    assert [p["shape"][1] for p in json.loads(r.stdout.strip().splitlines()[-1])["partitions"]] == \
        [224, 112, 112, 56, 56, 56, 28, 28, 28, 14, 14, 14, 7]
    r = run_plan("partitions", "--model", "resnet")
    assert r.returncode == 2 and "Unknown model 'resnet'" in r.stderr


def test_evaluation_and_banks_refuse_graph_models_without_trained_weights(tmp_path):
    for args in (("bank", "build", "--model", "resnet18", "--out", str(tmp_path / "bank")),
                 ("evaluate", "--model", "mobilenet_v2", "--scheme", "0:8:4", "--dataset", "fashion-mnist")):
        r = run_plan(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"{args[args.index('--model') + 1]} has no trained weights here" in r.stderr and "--weights" in r.stderr
    assert not (tmp_path / "bank").exists()
    from planner.evaluate import default_db_path
    assert not default_db_path("mobilenet_v2").exists()       # refused before a database is created


# -- a real cloud serving resnet18 over gRPC ------------------------------------------------------
E2E_CUTS = (0, 4, 8)             # the stem, a block in layer2/3, the last block


@pytest.fixture(scope="module")
def resnet_cloud():
    from tests.conftest import CloudProcess
    cloud = CloudProcess("--model", "resnet18", "--input-size", "x".join(map(str, SMALL_HW)),
                         "--profile-repeats", "1")
    yield cloud
    assert cloud.stop() == 0, "cloud did not exit 0 on SIGTERM"


@pytest.fixture(scope="module")
def resnet_images():
    gen = np.random.default_rng(0)
    return gen.integers(0, 256, (8, 3, *SMALL_HW), dtype=np.uint8)      # (N, 3, 64, 64) uint8


def test_server_info_partition_table_is_the_finders(resnet_cloud):
    from device.client import ClientConfig, CloudClient
    with CloudClient(ClientConfig(resnet_cloud.address, timeout_s=30)) as client:
        info = {m.name: m for m in client.server_info().models}["resnet18"]
    table = partition_table(get_spec("resnet18"), SMALL_HW)
    assert [(p.index, p.channels, p.height, p.width) for p in info.partitions] == \
        [(p.index, *p.shape) for p in table]
    assert list(info.input_shape) == [3, *SMALL_HW] and all(p.cloud_tail_s > 0 for p in info.partitions)


@pytest.mark.parametrize("bits", ["lossless", 8])
def test_split_over_grpc_gives_the_local_models_top1(resnet_cloud, resnet_images, graph_models, bits):
    from device.app import Device, DeviceConfig, TailChoice
    model = graph_models["resnet18"]
    with torch.inference_mode():
        local = model(model.preprocess(torch.from_numpy(resnet_images))).numpy()    # (N, 1000)
    for p in E2E_CUTS:
        c = model.partitions[p].channels
        dev = Device(DeviceConfig(cloud=resnet_cloud.address, model="resnet18", scheme=f"{p}:{c}:8",
                                  tail=TailChoice.UNMODIFIED, lossless=bits == "lossless"))
        assert dev.input_hw == SMALL_HW     # a fixed scheme reads images at the size the cloud serves
        try:
            results = [dev.frame(img, None)[0] for img in resnet_images]
        finally:
            dev.close()
        top1 = [r.top1 for r in results]
        assert all(r.wire_bytes > 0 and r.fallback is None for r in results)   # every frame split, none fell back
        agree = np.mean(np.array(top1) == local.argmax(1))
        print(f"resnet18 P{p} C{c} {bits}: top-1 agrees with the local model on {agree:.0%}")
        assert top1 == local.argmax(1).tolist(), (p, bits, top1)


@pytest.mark.slow
def test_export_of_a_graph_model_runs_on_onnx_runtime_as_torch_does(tmp_path):
    """`coinfer-plan export` for resnet18 (224x224, about 20 s): every ONNX head equals the torch
    head, and the manifest carries the same channel orders and how they were ranked."""
    from device.onnx_heads import OnnxHeads
    from device.torch_heads import TorchHeads
    from planner.export import export_model
    r = export_model("resnet18", tmp_path)
    onnx, torch_heads = OnnxHeads(tmp_path), TorchHeads.build("resnet18")
    assert [p["node"] for p in r.manifest["partitions"]] == [p.node for p in torch_heads.partitions]
    assert {p["ranking"] for p in r.manifest["partitions"]} == {"bn-folded", "mean-abs-activation"}
    img = np.random.default_rng(1).integers(0, 256, (3, 224, 224), dtype=np.uint8)
    for p in range(len(torch_heads.partitions)):
        assert onnx.partitions[p].shape == torch_heads.partitions[p].shape
        np.testing.assert_allclose(onnx.head(img, p), torch_heads.head(img, p), atol=1e-4, rtol=0)
        assert onnx.order(p) == torch_heads.order(p)
    np.testing.assert_allclose(onnx.logits(img), torch_heads.logits(img), atol=1e-4, rtol=0)


def test_auto_without_accuracy_rows_says_what_a_graph_model_needs(tmp_path):
    from device.live_planner import runnable_errors
    with pytest.raises(ValueError, match="resnet18 is a torchvision-graph model.*--db FILE"):
        runnable_errors(tmp_path / "none.sqlite", "resnet18", "", "ft0-")


def test_profile_and_search_run_on_a_graph_model(tmp_path, capsys):
    """The latency profile of resnet18 (224x224, random init) has the finder's table, and the one
    search driver plans over it with accuracy rows given in the seed's text format."""
    from planner.__main__ import main
    from planner.profile import MeasureConfig, measure_profile, save_profile
    prof = measure_profile("resnet18", MeasureConfig(warmup=0, repeats=1), base_top1_error=0.30)
    table = partition_table(get_spec("resnet18"))
    assert [(q.index, q.conv_channels, q.height, q.width) for q in prof.partitions] == \
        [(p.index, *p.shape) for p in table]
    assert all(q.device_head_s > 0 and q.cloud_tail_s > 0 for q in prof.partitions)
    save_profile(prof, tmp_path / "r18.json")
    (tmp_path / "db.txt").write_text("0+64-8*0.30\n4+128-4*0.31\n8+512-2*0.32\n8+256-1*0.33\n")
    rc = main(["search", "--profile", str(tmp_path / "r18.json"), "--db", str(tmp_path / "db.txt"), "--space", "db",
               "--bandwidth-mbps", "1000", "--accuracy-loss", "0.05", "--json"])
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and doc["accuracy_loss"] <= 0.05 and doc["scheme"] in {"device-only", "cloud-only", "0:64:8",
                                                                          "4:128:4", "8:512:2", "8:256:1"}


def test_channel_orders_recorded_on_training_images_are_loaded_with_the_weights(tmp_path, capsys):
    """`partitions --record-orders imagefolder:DIR --weights FILE` writes FILE.channel-order.json;
    every later build with FILE (cloud, device, export) ranks those cuts by it; other weights refuse it."""
    import torchvision
    from PIL import Image

    from planner.__main__ import main
    from planner.channel_stats import ChannelOrderError, orders_path
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for cls in ("a", "b", "c"):
            (tmp_path / "folder" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / "folder" / split / cls / f"{i}.png")
    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    rc = main(["partitions", "--model", "resnet18", "--weights", str(weights), "--num-classes", "3",
               "--record-orders", f"imagefolder:{tmp_path / 'folder'}", "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 12
    record = json.loads(orders_path(weights).read_text())
    assert record["images"] == 12 and set(record["orders"]) == {str(p) for p in range(1, 9)}   # block outputs
    model = build_model("resnet18", num_classes=3, weights=weights)
    assert model.orders_source == orders_path(weights).name
    for key, order in record["orders"].items():
        assert model.channel_order(int(key)) == tuple(order)
    other = tmp_path / "other.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), other)
    orders_path(other).write_text(orders_path(weights).read_text())
    with pytest.raises(ChannelOrderError, match="measured on weights sha256 .* but the weights are sha256"):
        build_model("resnet18", num_classes=3, weights=other)
