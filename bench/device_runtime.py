"""`make bench-device`: the device's network on torch and on ONNX Runtime, side by side in one run.

1. Predictions: ONNX against torch top-1.  fmnist-vgg through a real cloud daemon on loopback
   (`DeviceRunner.run`, the shipped bank's tails): device-only and fixed split schemes on the
   first N Fashion-MNIST test images.  vgg16_bn (seeded random weights) in-process: each
   runtime's head, then the same codec encode/decode and torch tail (`SplitCNN.tail`).
2. Start-up and memory: `coinfer-device infer --scheme device-only` on one image, spawned;
   wall time from spawn to exit and the child's peak RSS (wait4), both runtimes; the ONNX
   device also from the lean device environment (no torch installed).
3. Head time per partition: median seconds of `heads.head(image, P)`, one thread each, the
   two runtimes interleaved so that both see the same machine load.
4. The lean device environment (`pip install '.[device]'`): its site-packages on disk, torch absent.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import RunLoad, header, write
from cloud.daemon import REPO, CloudDaemon
from common import codec
from device.client import ClientConfig, CloudClient
from device.heads import Heads, Runtime, load_heads
from device.runner import DeviceRunner
from planner.data import fashion_mnist_arrays
from planner.export import export_model
from planner.scheme import DEVICE_ONLY, Scheme

FMNIST, VGG = "fmnist-vgg", "vgg16_bn"
RUNTIMES = (Runtime.TORCH, Runtime.ONNX)
FMNIST_RSS_TARGET_MB = 150          # the ONNX fmnist-vgg device's peak RSS
# sizes of a run: the full one (the defaults) and --quick (a trial)
FULL = dict(images=2000, vgg_images=30, spawns=3, repeats=50, vgg_repeats=5)
QUICK = dict(images=200, vgg_images=5, spawns=1, repeats=10, vgg_repeats=2)


# --- 4. the lean device environment ------------------------------------------------------------

def _run(argv: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)


def _fail(what: str, proc: subprocess.CompletedProcess) -> SystemExit:
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    return SystemExit(f"bench.device_runtime: {what} (exit {proc.returncode}):\n{tail}")


def build_lean_venv(venv: Path) -> None:
    """`python -m venv` + `pip install '<repo>[device]'`; refuses one that would bring torch.  pip
    builds from a copy of the working tree: a build writes its egg-info into the source."""
    src = venv.parent / "device-src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build",
                                                             "results", "runs"))
    target, shown = f"{src}[device]", f"{REPO}[device]"
    proc = _run([sys.executable, "-m", "venv", venv])
    if proc.returncode:
        raise _fail(f"python -m venv {venv} failed", proc)
    pip = venv / "bin" / "pip"
    report = venv / "pip-report.json"
    proc = _run([pip, "install", "-q", "--dry-run", "--report", report, target], timeout=1800)
    if proc.returncode:
        raise _fail(f"pip cannot resolve '{shown}'", proc)
    names = sorted(i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"])
    if "torch" in names:
        extra = [ln for ln in proc.stderr.splitlines() if "does not provide the extra" in ln]
        raise SystemExit(f"bench.device_runtime: pip install '{shown}' would install torch "
                         f"({(extra or ['the device extra pulls it in'])[0].strip()}); the lean device environment "
                         "needs a [device] extra without torch, or give --device-venv DIR")
    proc = _run([pip, "install", "-q", target], timeout=1800)
    if proc.returncode:
        raise _fail(f"pip install '{shown}' failed", proc)


def du_bytes(path: str | Path) -> int:
    proc = _run(["du", "-sk", path])
    if proc.returncode:
        raise _fail(f"du {path} failed", proc)
    return int(proc.stdout.split()[0]) * 1024


def lean_venv_facts(venv: Path) -> dict:
    """site-packages size (du), its largest entries, and whether torch can be imported there."""
    py = venv / "bin" / "python"
    if not py.is_file():
        raise SystemExit(f"bench.device_runtime: --device-venv {venv}: no bin/python")
    probe = ("import importlib.util, json, sysconfig; print(json.dumps([sysconfig.get_paths()['purelib'], "
             "importlib.util.find_spec('torch') is not None, importlib.util.find_spec('onnxruntime') is not None]))")
    proc = _run([py, "-c", probe], cwd=tempfile.gettempdir())
    if proc.returncode:
        raise _fail(f"{py} does not run", proc)
    site, has_torch, has_ort = json.loads(proc.stdout)
    if has_torch:
        raise SystemExit(f"bench.device_runtime: {venv} has torch installed: not the lean device environment")
    if not has_ort:
        raise SystemExit(f"bench.device_runtime: {venv} has no onnxruntime: it cannot run the ONNX device")
    entries = sorted(((du_bytes(p), p.name) for p in Path(site).iterdir()), reverse=True)
    tools = sum(b for b, n in entries if n.split("-")[0] in ("pip", "setuptools", "_distutils_hack"))
    return {"python": py, "site_bytes": du_bytes(site), "tools_bytes": tools, "largest": entries[:6]}


# --- 2. start-up to first answer, peak RSS ----------------------------------------------------------

# A child forked from this process (gigabytes once vgg16_bn is exported) starts with its
# high-water mark: Linux carries it over fork and exec into ru_maxrss.  A small launcher
# (Python without site) forks the device instead, so that its figure is the device's own.
LAUNCHER = """import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump([time.perf_counter() - t0, os.waitstatus_to_exitcode(status), usage.ru_maxrss], f)
"""


def spawn(python: Path, args: list[str]) -> tuple[float, int]:
    """`python -m device infer ARGS` (the project on PYTHONPATH): (seconds spawn to exit, peak RSS bytes)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        result, out, err = (Path(tmp) / n for n in ("result.json", "stdout", "stderr"))
        with open(out, "w") as o, open(err, "w") as e:
            subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, result, python, "-m", "device", "infer",
                            *args], cwd=REPO, env=env, stdout=o, stderr=e, check=True)
        wall, rc, maxrss_kib = json.loads(result.read_text())
        lines = out.read_text().strip().splitlines()
        if rc or not lines or json.loads(lines[-1]).get("images") != 1:
            raise RuntimeError(f"coinfer-device infer {' '.join(args)} failed (exit {rc}): "
                               f"{(err.read_text().strip().splitlines() or ['no output'])[-1]}")
    return wall, maxrss_kib * 1024          # ru_maxrss: KiB on Linux


def startup_rows(cases: list[tuple[str, str, Path, list[str]]], spawns: int) -> list[str]:
    samples: dict[int, list[tuple[float, int]]] = {i: [] for i in range(len(cases))}
    for _ in range(spawns):                   # interleaved: every case sees the same load
        for i, (_, _, python, args) in enumerate(cases):
            samples[i].append(spawn(python, args))
    rows = [f"| model | runtime | environment | spawn to exit s (median of {spawns}) | min-max s | "
            f"peak RSS MB (median) | target |", "|---|---|---|---:|---:|---:|---|"]
    for i, (model, env_name, _, args) in enumerate(cases):
        walls, rss = [w for w, _ in samples[i]], statistics.median(r for _, r in samples[i]) / 1e6
        runtime = args[args.index("--runtime") + 1]
        target = ""
        if model == FMNIST and runtime == "onnx":
            target = f"<= {FMNIST_RSS_TARGET_MB} MB: {'met' if rss <= FMNIST_RSS_TARGET_MB else 'NOT met'}"
        rows.append(f"| {model} | {runtime} | {env_name} | {statistics.median(walls):.2f} | "
                    f"{min(walls):.2f}-{max(walls):.2f} | {rss:.1f} | {target} |")
    return rows


# --- 1. predictions ---------------------------------------------------------------------------

def fmnist_prediction_rows(heads: dict[Runtime, Heads], schemes: list[Scheme], images: np.ndarray,
                           labels: np.ndarray) -> list[str]:
    rows = ["| setting | images | cloud tail | top-1 differing | torch top-1 | ONNX top-1 |",
            "|---|---:|---|---:|---:|---:|"]
    cloud = CloudDaemon(["--model", FMNIST, "--profile-repeats", "0", "--threads", "1"]).start()
    try:
        with CloudClient(ClientConfig(cloud.address, timeout_s=60)) as client:
            runners = {rt: DeviceRunner(h, FMNIST, client) for rt, h in heads.items()}
            for scheme in [DEVICE_ONLY, *schemes]:
                top1 = {rt: [] for rt in runners}
                tails = set()
                for img, y in zip(images, labels):
                    for rt, runner in runners.items():
                        r = runner.run(scheme, img, int(y))
                        if r.fallback:
                            raise RuntimeError(f"{scheme}: the frame fell back to the device ({r.fallback})")
                        top1[rt].append(r.top1)
                        tails.add(r.tail or "-")
                t, o = (np.array(top1[rt]) for rt in RUNTIMES)
                rows.append(f"| {scheme} | {len(images)} | {', '.join(sorted(tails))} | {int((t != o).sum())} | "
                            f"{float((t == labels).mean()):.4f} | {float((o == labels).mean()):.4f} |")
    finally:
        cloud.stop()
    return rows


@torch.inference_mode()
def vgg_prediction_rows(heads: dict[Runtime, Heads], schemes: list[Scheme], images: np.ndarray) -> list[str]:
    """Each runtime's head and kept channels; the same codec and torch tail after both."""
    model = heads[Runtime.TORCH].model
    rows = ["| scheme | images | kept channels equal | top-1 differing | top-5 sets differing | distinct torch top-1 | "
            "max abs difference / max abs, head | the same, logits |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for s in schemes:
        part = heads[Runtime.TORCH].partition(s.partition)
        kept = {rt: h.kept(s.partition, s.channels) for rt, h in heads.items()}
        logits = {rt: [] for rt in heads}
        head_rel = 0.0
        for img in images:
            fms = {rt: h.head(img, s.partition) for rt, h in heads.items()}    # (C, H, W) float32 each
            for rt, fm in fms.items():
                enc = codec.encode_feature_map(fm, s.partition, kept[rt], s.bits)
                dec = codec.decode_feature_map(enc, part.channels, part.height, part.width)
                logits[rt].append(model.tail(torch.from_numpy(dec)[None], s.partition)[0].numpy())
            head_rel = max(head_rel, _rel_diff(fms[Runtime.TORCH], fms[Runtime.ONNX]))
        t, o = (np.stack(logits[rt]) for rt in RUNTIMES)                       # (N, classes) each
        top5 = sum(set(a) != set(b) for a, b in zip(np.argsort(-t)[:, :5], np.argsort(-o)[:, :5]))
        same = "yes" if np.array_equal(*(kept[rt] for rt in RUNTIMES)) else "NO"
        rows.append(f"| {s} | {len(images)} | {same} | {int((t.argmax(1) != o.argmax(1)).sum())} | {top5} | "
                    f"{len(set(t.argmax(1).tolist()))} | {head_rel:.2e} | {_rel_diff(t, o):.2e} |")
    return rows


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-30))


# --- 3. head time per partition ---------------------------------------------------------------

def head_time_rows(heads: dict[Runtime, Heads], image: np.ndarray, repeats: int) -> list[str]:
    rows = ["| P | (C, H, W) | torch s | ONNX s | torch / ONNX |", "|---:|---|---:|---:|---:|"]
    ref = heads[Runtime.TORCH]
    runs = [(str(p.index), str(p.shape), lambda h, p=p.index: h.head(image, p)) for p in ref.partitions]
    runs.append(("whole network (logits)", f"({ref.num_classes},)", lambda h: h.logits(image)))
    for name, shape, call in runs:
        times = {rt: [] for rt in heads}
        for h in heads.values():                 # warm-up
            call(h)
        for _ in range(repeats):
            for rt, h in heads.items():
                t0 = time.perf_counter()
                call(h)
                times[rt].append(time.perf_counter() - t0)
        t, o = (statistics.median(times[rt]) for rt in RUNTIMES)
        rows.append(f"| {name} | {shape} | {t:.6f} | {o:.6f} | {t / o:.2f} |")
    return rows


# --- the run ------------------------------------------------------------------------------------

def synthetic_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """(n, C, H, W) uint8, seeded."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def timed_export(model: str, out: Path) -> tuple[Path, float, int]:
    t0 = time.perf_counter()
    res = export_model(model, out)
    return out, time.perf_counter() - t0, res.bytes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, help=f"Fashion-MNIST test images per setting (default {FULL['images']})")
    ap.add_argument("--schemes", default="1:8:4,3:16:2,0:2:8", help="fmnist-vgg split schemes (in the shipped bank)")
    ap.add_argument("--vgg-images", type=int, help=f"seeded synthetic vgg16_bn images (default {FULL['vgg_images']})")
    ap.add_argument("--vgg-schemes", default="1:16:8,4:64:8,9:128:8", help="vgg16_bn split schemes")
    ap.add_argument("--spawns", type=int, help=f"spawns per start-up case (default {FULL['spawns']})")
    ap.add_argument("--repeats", type=int, help=f"fmnist-vgg head timings per partition (default {FULL['repeats']})")
    ap.add_argument("--vgg-repeats", type=int, help=f"vgg16_bn head timings per partition (default {FULL['vgg_repeats']})")
    ap.add_argument("--device-venv", metavar="DIR", help="an existing lean device venv to measure (default: build "
                    "one in a temporary directory with pip install '<repo>[device]')")
    ap.add_argument("--quick", action="store_true", help=f"a trial run: {QUICK} unless given")
    ap.add_argument("--no-write", action="store_true", help="print the result; do not write bench/results/device.md")
    args = ap.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    load = RunLoad()
    torch.set_num_threads(1)
    schemes = [Scheme.parse(s) for s in args.schemes.split(",")]
    vgg_schemes = [Scheme.parse(s) for s in args.vgg_schemes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-device-") as tmp_name:
        tmp = Path(tmp_name)
        venv = Path(args.device_venv).resolve() if args.device_venv else tmp / "device-venv"
        t0 = time.perf_counter()
        if not args.device_venv:                 # first: a failed install costs nothing else
            build_lean_venv(venv)
        venv_s = time.perf_counter() - t0
        lean = lean_venv_facts(venv)
        exports = {m: timed_export(m, tmp / f"export-{m}") for m in (FMNIST, VGG)}
        png = tmp / "vgg-input.png"
        from PIL import Image
        Image.fromarray(synthetic_images(1, (224, 224, 3), seed=1)[0]).save(png)

        inputs = {FMNIST: ["--limit", "1", "--dataset", "fashion-mnist"], VGG: [str(png)]}
        cases = []
        for model in (FMNIST, VGG):
            common = ["--model", model, "--scheme", "device-only", "--json", *inputs[model]]
            onnx = ["--runtime", "onnx", "--export", str(exports[model][0]), *common]
            cases += [(model, "bench venv (torch installed)", Path(sys.executable), ["--runtime", "torch", *common]),
                      (model, "bench venv (torch installed)", Path(sys.executable), onnx),
                      (model, "lean device venv (no torch)", lean["python"], onnx)]
        startup = startup_rows(cases, args.spawns)

        heads = {m: {rt: load_heads(rt, m, export=str(exports[m][0]) if rt is Runtime.ONNX else None, threads=1)
                     for rt in RUNTIMES} for m in (FMNIST, VGG)}
        x, y = fashion_mnist_arrays("test")                         # (N, 1, 28, 28) uint8, (N,)
        fm_pred = fmnist_prediction_rows(heads[FMNIST], schemes, x[:args.images], y[:args.images])
        vgg_images = synthetic_images(args.vgg_images, (3, 224, 224))
        vgg_pred = vgg_prediction_rows(heads[VGG], vgg_schemes, vgg_images)
        times = {FMNIST: head_time_rows(heads[FMNIST], x[0], args.repeats),
                 VGG: head_time_rows(heads[VGG], vgg_images[0], args.vgg_repeats)}
        versions = {rt: heads[FMNIST][rt].version for rt in RUNTIMES}
        del heads

    torch_dir = Path(torch.__file__).parent
    out = header("Device runtimes: torch and ONNX Runtime side by side",
                 " ".join(["python -m bench.device_runtime", *map(shlex.quote, argv)]), load)
    out += [f"- runtimes: {versions[Runtime.TORCH]}; {versions[Runtime.ONNX]}",
            "- exports (`planner.export.export_model`, into a temporary directory, deleted after the run): "
            + "; ".join(f"{m} {b / 1e6:.2f} MB in {s:.1f} s" for m, (_, s, b) in exports.items()), "",
            "### Predictions: ONNX Runtime device against torch device", "",
            f"fmnist-vgg (shipped weights), the first {args.images} Fashion-MNIST test images: `DeviceRunner.run` "
            "of each runtime through one real cloud daemon on loopback (`coinfer-cloud serve`, its shipped bank; "
            "device-only runs on the device alone).", "", *fm_pred, "",
            f"vgg16_bn (seeded random weights, 1000 classes), {args.vgg_images} seeded random 224x224 RGB images: "
            "each runtime's head and kept channels, then the same codec encode/decode and the torch tail "
            "(`SplitCNN.tail`) in-process, not through a cloud.", "", *vgg_pred, "",
            "### Start-up to first answer and peak memory", "",
            "`python -m device infer --runtime R [--export DIR] --model M --scheme device-only --json` on one image "
            "(fmnist-vgg: `--dataset fashion-mnist --limit 1`; vgg16_bn: a seeded random 224x224 PNG), the project "
            "on PYTHONPATH; wall time from spawn to exit and peak RSS (wait4 ru_maxrss), taken by a small launcher "
            "that forks the device.", "", *startup, ""]
    for m in (FMNIST, VGG):
        out += [f"### Head time per partition, {m} (one thread each, median of "
                f"{args.repeats if m == FMNIST else args.vgg_repeats}, runtimes interleaved)", "", *times[m], ""]
    made = (f"given (`--device-venv {args.device_venv}`)" if args.device_venv
            else f"built by this run in {venv_s:.0f} s: `python -m venv` + `pip install '.[device]'`, deleted after")
    out += ["### Lean device environment", "",
            f"- venv: {made}",
            f"- site-packages: {lean['site_bytes'] / 1e6:.1f} MB (du), of which pip and setuptools "
            f"{lean['tools_bytes'] / 1e6:.1f} MB",
            "- largest entries: " + ", ".join(f"{n} {b / 1e6:.1f} MB" for b, n in lean["largest"]),
            "- torch: absent (`importlib.util.find_spec('torch')` is None in that venv); onnxruntime present",
            f"- for comparison, torch's package in the bench's venv: {du_bytes(torch_dir) / 1e6:.1f} MB (du)"]
    if args.no_write:
        print("\n".join(out))
    else:
        write("device", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
