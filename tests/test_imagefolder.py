"""`--dataset imagefolder:DIR`: a Fashion-MNIST subset exported as PNG files reads, trains,
evaluates and runs on the device exactly as the built-in loader's same images do."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from planner.data import DatasetUnavailable, fashion_mnist_arrays
from planner.datasets import (ClassMismatchError, DatasetError, EmptyClassError, MissingSplitError,
                              UnknownDatasetError, UnreadableImageError, dataset_arrays, folder_samples,
                              parse_dataset, read_image)

N_TRAIN, N_TEST = 600, 200
MODEL = "fmnist-vgg"


def export_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """(N, 1, H, W) uint8 -> root/split/<label>/<index>.png (lossless)."""
    for i, (img, label) in enumerate(zip(images, labels)):
        d = root / split / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(d / f"{i:05d}.png")


@pytest.fixture(scope="module")
def fmnist():
    try:
        (xtr, ytr), (xte, yte) = fashion_mnist_arrays("train"), fashion_mnist_arrays("test")
    except DatasetUnavailable as e:
        pytest.skip(str(e))
    return xtr[:N_TRAIN], ytr[:N_TRAIN], xte[:N_TEST], yte[:N_TEST]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, fmnist):
    root = tmp_path_factory.mktemp("fmnist-folder")
    xtr, ytr, xte, yte = fmnist
    export_split(root, "train", xtr, ytr)
    export_split(root, "test", xte, yte)
    return root


def folder_order(labels: np.ndarray) -> np.ndarray:
    """ImageFolder's order of the exported images: by class ("0".."9"), then file name (index)."""
    return np.argsort(labels, kind="stable")


# -- reading ------------------------------------------------------------------------------------
def test_listing_is_torchvision_imagefolders(folder, tmp_path):
    from torchvision.datasets import ImageFolder
    for split in ("train", "test"):
        tv = ImageFolder(str(folder / split))
        classes, samples = folder_samples(folder, split)
        assert classes == tv.classes and [(str(p), y) for p, y in samples] == tv.samples
    # nested directories, other extensions, files that are not images, classes sorted as strings
    for split in ("train", "test"):
        for cls, names in {"b": ["z.png", "sub/a.JPG", "notes.txt"], "a": ["2.png", "10.jpeg"], "B": ["x.bmp"]}.items():
            for name in names:
                (tmp_path / split / cls / name).parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (4, 4), 7).save(tmp_path / split / cls / name,
                                               format={"txt": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}.get(
                                                   name.rsplit(".", 1)[1].lower(), None))
    tv = ImageFolder(str(tmp_path / "train"))
    classes, samples = folder_samples(tmp_path, "train")
    assert classes == tv.classes == ["B", "a", "b"]
    assert [(str(p), y) for p, y in samples] == tv.samples and len(samples) == 5


def test_arrays_equal_the_builtin_loaders_in_imagefolder_order(folder, fmnist):
    from planner.train import load_dataset
    for split, x, y in (("train", *fmnist[:2]), ("test", *fmnist[2:])):
        order = folder_order(y)
        xf, yf = load_dataset(f"imagefolder:{folder}", split, shape=(1, 28, 28))
        assert xf.dtype == torch.uint8 and yf.dtype == torch.int64 and xf.shape == (len(y), 1, 28, 28)
        assert torch.equal(xf, torch.from_numpy(x[order])) and torch.equal(yf, torch.from_numpy(y[order]))


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_decoding_equals_torchvisions(folder, tmp_path):
    from torchvision.io import ImageReadMode, decode_image
    path = next((folder / "test" / "3").iterdir())
    for mode, channels in ((ImageReadMode.GRAY, 1), (ImageReadMode.RGB, 3)):   # grayscale to 3 channels too
        assert np.array_equal(read_image(path, channels, (28, 28)), decode_image(str(path), mode=mode).numpy())
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(read_image(tmp_path / "rgb.png", 3, (20, 30)),
                          decode_image(str(tmp_path / "rgb.png"), mode=ImageReadMode.RGB).numpy())
    gray = read_image(tmp_path / "rgb.png", 1, (20, 30)).astype(int)[0]       # ITU-R 601-2 luma
    r, g, b = rgb.astype(int).transpose(2, 0, 1)
    luma = (r * 299 + g * 587 + b * 114) / 1000
    assert np.abs(gray - luma).max() <= 1
    big = read_image(tmp_path / "rgb.png", 3, (40, 60))                         # resized to the model's size
    assert big.shape == (3, 40, 60) and big.dtype == np.uint8


def test_an_rgb_model_gets_three_equal_channels_at_its_size(folder):
    x, y = dataset_arrays(parse_dataset(f"imagefolder:{folder}"), "test", 3, (32, 32))
    assert x.shape == (N_TEST, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2])


# -- errors -------------------------------------------------------------------------------------
def _tiny(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("L", (28, 28), i).save(root / split / cls / f"{i}.png")
    return root


def test_unknown_dataset_spec_is_named():
    for spec in ("foo", "imagefolder:", "fashion_mnist"):
        with pytest.raises(UnknownDatasetError, match=f"got {spec!r}"):
            parse_dataset(spec)


def test_missing_split_is_named(tmp_path):
    root = _tiny(tmp_path, {"train": {"a": 1}})
    with pytest.raises(MissingSplitError, match=r"'test' directory .*test"):
        dataset_arrays(parse_dataset(f"imagefolder:{root}"), "test", 1, (28, 28))
    (tmp_path / "test").mkdir()
    with pytest.raises(MissingSplitError, match="class directories"):
        dataset_arrays(parse_dataset(f"imagefolder:{root}"), "test", 1, (28, 28))


def test_empty_class_is_named(tmp_path):
    root = _tiny(tmp_path, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 0}})
    (root / "test" / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(EmptyClassError, match=r"test/b'"):
        dataset_arrays(parse_dataset(f"imagefolder:{root}"), "test", 1, (28, 28))


def test_mismatched_classes_are_named(tmp_path):
    root = _tiny(tmp_path, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "c": 1}})
    for split in ("train", "test"):
        with pytest.raises(ClassMismatchError, match=r"\['b'\].*\['c'\]|\['c'\].*\['b'\]"):
            dataset_arrays(parse_dataset(f"imagefolder:{root}"), split, 1, (28, 28))


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_unreadable_image_is_named_by_path(tmp_path, content):
    root = _tiny(tmp_path, {"train": {"a": 2}, "test": {"a": 2}})
    bad = root / "test" / "a" / "1.png"
    if content == "truncated":            # a noisy image cut in the middle of its pixel data
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(bad)
        content = bad.read_bytes()[:400]
    bad.write_bytes(content)
    with pytest.raises(UnreadableImageError, match=str(bad)):
        dataset_arrays(parse_dataset(f"imagefolder:{root}"), "test", 1, (28, 28))


def test_the_clis_print_the_error_and_exit_2(tmp_path, capsys):
    from device.__main__ import main as device_main
    from planner.__main__ import main as plan_main
    assert plan_main(["train", "--model", MODEL, "--dataset", "foo", "--out", str(tmp_path / "w.pt")]) == 2
    assert "coinfer-plan: dataset: expected 'fashion-mnist' or 'imagefolder:DIR', got 'foo'" in capsys.readouterr().err
    assert plan_main(["evaluate", "--model", MODEL, "--scheme", "1:8:4", "--db", str(tmp_path / "a.sqlite"),
                      "--dataset", f"imagefolder:{tmp_path / 'none'}"]) == 2
    assert "expected a 'test' directory" in capsys.readouterr().err
    assert device_main(["infer", "--cloud", "127.0.0.1:1", "--dataset", "foo"]) == 2
    assert "got 'foo'" in capsys.readouterr().err
    assert isinstance(UnknownDatasetError("x"), ValueError) and issubclass(UnreadableImageError, DatasetError)


# -- training and evaluating --------------------------------------------------------------------
def test_training_from_the_folder_equals_the_builtin_loader(folder, fmnist, tmp_path):
    from planner.models import build_model
    from planner.train import TrainConfig, fit, predict_logits, top1_error, train_model
    xtr, ytr, xte, yte = fmnist
    cfg = TrainConfig(epochs=0.5, threads=1)                     # 3 steps of 128 images
    res = train_model(MODEL, cfg, out=tmp_path / "folder.pt", progress=False,
                      dataset=f"imagefolder:{folder}")
    assert res.dataset == f"imagefolder:{folder.resolve()}" and res.test_size == N_TEST
    # the same run on the built-in arrays, in the folder's order
    order = folder_order(ytr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        ref = build_model(MODEL, use_default_weights=False)
    fit(ref, ref.preprocess, torch.from_numpy(xtr[order]), torch.from_numpy(ytr[order]), cfg, progress=False)
    got = torch.load(res.weights_path, weights_only=True)
    assert got.keys() == ref.state_dict().keys()
    assert all(torch.equal(got[k], v) for k, v in ref.state_dict().items())
    err = top1_error(predict_logits(ref, ref.preprocess, torch.from_numpy(xte)), torch.from_numpy(yte))
    assert res.top1_accuracy == 1.0 - err


def test_evaluating_from_the_folder_equals_the_builtin_loader(folder, tmp_path, capsys):
    from planner.__main__ import main as plan_main
    from planner.models import default_weights_path, get_spec
    if default_weights_path(get_spec(MODEL)) is None:
        pytest.skip("no shipped fmnist-vgg weights")
    rows = {}
    for name, extra in (("folder", ["--dataset", f"imagefolder:{folder}"]), ("builtin", ["--test-limit", str(N_TEST)])):
        assert plan_main(["evaluate", "--model", MODEL, "--scheme", "1:32:4", "--finetune-epochs", "0",
                          "--threads", "1", "--no-progress", "--db", str(tmp_path / f"{name}.sqlite"),
                          "--artifact-dir", str(tmp_path / name), "--json", *extra]) == 0
        rows[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rows["folder"]["dataset"] == f"imagefolder:{folder.resolve()}"
    assert rows["folder"]["test_size"] == rows["builtin"]["test_size"] == N_TEST
    for key in ("top1_error", "base_error", "accuracy_loss"):
        assert rows["folder"][key] == rows["builtin"][key], key
    assert rows["folder"]["base_error"] < 0.2 and rows["folder"]["top1_error"] < 0.3


def test_evaluate_grid_reads_the_folder(folder, tmp_path, capsys):
    from planner.__main__ import main as plan_main
    from planner.models import default_weights_path, get_spec
    if default_weights_path(get_spec(MODEL)) is None:
        pytest.skip("no shipped fmnist-vgg weights")
    assert plan_main(["evaluate-grid", "--model", MODEL, "--dataset", f"imagefolder:{folder}", "--partitions", "5",
                      "--channels", "all", "--bits", "8", "--finetune-epochs", "0", "--threads", "1",
                      "--no-progress", "--db", str(tmp_path / "grid.sqlite"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["scheme"] for r in out["rows"]] == ["5:128:8"]
    assert out["rows"][0]["dataset"] == f"imagefolder:{folder.resolve()}" and out["rows"][0]["test_size"] == N_TEST


def test_a_folder_of_three_classes_trains_and_evaluates_a_three_class_head(fmnist, tmp_path):
    from planner.accuracy_db import AccuracyDB
    from planner.evaluate import ensure_base_record
    from planner.train import TrainConfig, train_model
    xtr, ytr, xte, yte = fmnist
    root = tmp_path / "three"
    export_split(root, "train", xtr[ytr < 3], ytr[ytr < 3])
    export_split(root, "test", xte[yte < 3], yte[yte < 3])
    res = train_model(MODEL, TrainConfig(epochs=0.25, threads=1), out=tmp_path / "three.pt", progress=False,
                      dataset=f"imagefolder:{root}")
    assert res.num_classes == 3 and res.test_size == int((yte < 3).sum())
    with AccuracyDB(tmp_path / "three.sqlite") as db:
        rec = ensure_base_record(MODEL, db, weights=tmp_path / "three.pt", progress=False,
                                 dataset=f"imagefolder:{root}")
    assert rec.dataset == f"imagefolder:{root.resolve()}" and rec.top1_error == pytest.approx(1 - res.top1_accuracy)


def test_bank_build_reads_the_folder(folder, tmp_path, capsys):
    from planner.__main__ import main as plan_main
    from planner.models import default_weights_path, get_spec
    if default_weights_path(get_spec(MODEL)) is None:
        pytest.skip("no shipped fmnist-vgg weights")
    rows = {}
    for name, extra in (("folder", ["--dataset", f"imagefolder:{folder}"]), ("builtin", ["--test-limit", str(N_TEST)])):
        assert plan_main(["bank", "build", "--model", MODEL, "--schemes", "2:16:4", "--finetune-epochs", "0",
                          "--threads", "1", "--no-progress", "--db", str(tmp_path / f"{name}.sqlite"),
                          "--out", str(tmp_path / f"bank-{name}"), "--json", *extra]) == 0
        rows[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["schemes"]
    assert rows["folder"] == rows["builtin"] and len(rows["folder"]) == 1
    manifest = json.loads((tmp_path / "bank-folder" / "manifest.json").read_text())
    assert manifest["dataset"] == f"imagefolder:{folder.resolve()}"


# -- the device -----------------------------------------------------------------------------------
def test_device_infer_on_the_folder_predicts_as_on_the_builtin_dataset(folder, fmnist, fmnist_cloud, capsys):
    from device.__main__ import main as device_main
    runs = {}
    for name, dataset, limit in (("folder", f"imagefolder:{folder}", []), ("builtin", "fashion-mnist",
                                                                           ["--limit", str(N_TEST)])):
        assert device_main(["infer", "--cloud", fmnist_cloud.address, "--model", MODEL, "--scheme", "1:8:4",
                            "--dataset", dataset, *limit, "--json"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        runs[name] = lines
    folder_frames, builtin_frames = runs["folder"][:-1], runs["builtin"][:-1]
    order = folder_order(fmnist[3])
    assert len(folder_frames) == len(builtin_frames) == N_TEST
    assert [f["scheme"] for f in folder_frames] == ["1:8:4"] * N_TEST
    assert [f["label"] for f in folder_frames] == [int(fmnist[3][i]) for i in order]
    assert [f["top1"] for f in folder_frames] == [builtin_frames[i]["top1"] for i in order]
    assert runs["folder"][-1]["top1_accuracy"] == runs["builtin"][-1]["top1_accuracy"]


def test_the_onnx_device_without_torch_reads_the_folder_as_the_torch_device(folder, fmnist_cloud, tmp_path,
                                                                             capsys):
    from device.__main__ import main as device_main
    from planner.export import export_model
    from tests.test_onnx_device import run_device_without_torch
    export_model(MODEL, tmp_path / "export")
    common = ["--cloud", fmnist_cloud.address, "--model", MODEL, "--scheme", "1:8:4",
              "--dataset", f"imagefolder:{folder}", "--limit", "50", "--json"]
    assert device_main(["infer", *common]) == 0
    torch_frames = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()][:-1]
    r, loaded = run_device_without_torch("infer", "--runtime", "onnx", "--export", str(tmp_path / "export"), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert loaded == [], f"loaded {loaded} on the ONNX path"
    onnx_frames = [json.loads(line) for line in r.stdout.splitlines()][:-1]
    assert len(onnx_frames) == len(torch_frames) == 50
    assert [(f["top1"], f["label"]) for f in onnx_frames] == [(f["top1"], f["label"]) for f in torch_frames]
