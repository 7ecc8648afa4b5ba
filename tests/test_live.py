"""Live measurement and planning on the device, against a real cloud and a real SQLite file."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from device.client import ClientConfig, CloudClient
from device.device_times import DeviceTimes, measure_device_times
from device.link import LinkEstimator
from device.live_planner import LivePlanner, runnable_errors
from device.live_profile import ByteRatios, LiveState
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.accuracy_db import AccuracyDB
from planner.evaluate import evaluate
from planner.models import build_model
from planner.profile import load_profile
from planner.requirement import RequirementKind, RequirementSpec
from planner.scheme import Scheme
from tests.conftest import REPO

SCHEMES = ["0:4:2", "1:8:4", "3:16:4", "3:64:8", "5:8:2", "5:128:8"]


@pytest.fixture(scope="module")
def live_db(tmp_path_factory):
    """Real evaluations (no fine-tuning, 300 test images) of a few schemes."""
    path = tmp_path_factory.mktemp("db") / "live.sqlite"
    with AccuracyDB(path) as db:
        for s in SCHEMES:
            evaluate("fmnist-vgg", Scheme.parse(s), 0, db, test_limit=300, save=False, progress=False)
    return path


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_model("fmnist-vgg")


def test_link_estimator_smooths_and_ignores_short_transfers():
    est = LinkEstimator(alpha=0.5, rtt_alpha=0.5, min_passive_bytes=1500)
    est.add_rtt(0.010)
    est.observe_inference(wire_bytes=1000, rtt_s=1.0, server_s=0.0)     # short, no bandwidth yet: ignored
    assert est.bandwidth_mbps is None and est.rtt_s == 0.010
    est.observe_inference(wire_bytes=125_000, rtt_s=1.010 + 0.005, server_s=0.005)  # 1 Mbit in 1 s
    assert est.bandwidth_mbps == pytest.approx(1.0)
    est.observe_inference(wire_bytes=125_000, rtt_s=0.510 + 0.005, server_s=0.005)  # 2 Mbps sample
    assert est.bandwidth_mbps == pytest.approx(1.5)                     # halfway at alpha 0.5
    assert est.samples == 2
    # a short frame samples the round trip: 1000 bytes take 5.33 ms at 1.5 Mbps
    est.observe_inference(wire_bytes=1000, rtt_s=0.030 + 1000 * 8 / 1.5e6 + 0.002, server_s=0.002)
    assert est.rtt_s == pytest.approx(0.5 * 0.010 + 0.5 * 0.030) and est.samples == 2
    assert 0 <= est.idle_for() < 60                                     # the session's prober waits on it
    assert LinkEstimator().idle_for() == float("inf")


def test_byte_ratios_follow_the_traffic(model):
    runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", None)
    from planner.data import load_fashion_mnist
    img = load_fashion_mnist("test")[0][0].numpy()
    ratios = ByteRatios(alpha=1.0)
    req, _, _, encode_s = runner.prepare(Scheme.parse("1:8:4"), img)
    ratios.observe(req, encode_s, 0.001)
    packed = -(-8 * 14 * 14 * 4 // 8)
    assert ratios.ratios[(1, 4)] == pytest.approx(len(req.feature_map.payload) / packed)
    assert ratios.encode_s_per_value == pytest.approx(encode_s / (8 * 14 * 14)) and encode_s > 0
    assert ratios.decode_s_per_value == pytest.approx(0.001 / (8 * 14 * 14))
    ratios.observe(runner.prepare(Scheme.parse("cloud-only"), img)[0])
    assert 0 < ratios.image_ratio < 1.5


def test_device_times_cover_every_partition(model):
    t = measure_device_times(TorchHeads(model), repeats=3)
    assert len(t.head_s) == len(model.partitions)
    assert all(h > 0 for h in t.head_s) and t.full_model_s > 0
    # the head at the last cut is most of the network: never more than the whole
    assert t.head_s[-1] <= t.full_model_s * 1.5
    # encoding a map costs something, and far less than computing it did
    assert t.encode_s_fixed > 0 and t.encode_s_per_value >= 0
    assert 0 < t.encode_s_fixed + t.encode_s_per_value * 64 * 28 * 28 < t.full_model_s


def test_runnable_errors_keep_only_unmodified_network_rows(live_db, tmp_path):
    errors, base = runnable_errors(live_db, "fmnist-vgg", "fashion-mnist")
    assert {str(s) for s in errors} == set(SCHEMES) and 0 <= base <= 1
    with pytest.raises(ValueError, match="no ft1-\\* rows for fmnist-vgg"):
        runnable_errors(live_db, "fmnist-vgg", "fashion-mnist", recipe_prefix="ft1-")


def test_planner_switches_with_bandwidth_and_respects_hysteresis(fmnist_cloud, live_db, model):
    errors, base = runnable_errors(live_db, "fmnist-vgg", "fashion-mnist")
    with CloudClient(ClientConfig(fmnist_cloud.address)) as c:
        info = c.server_info().models[0]
    # a device far slower than the cloud (whatever this shared machine measured for the
    # cloud): its head times scaled until the whole net takes 1 s + 100 x the cloud's
    dev = measure_device_times(TorchHeads(model), repeats=3)
    k = (1.0 + 100 * max(info.cloud_full_model_s, max(p.cloud_tail_s for p in info.partitions))) / dev.full_model_s
    slow = DeviceTimes(tuple(k * h for h in dev.head_s), k * dev.full_model_s, 3, None, k * dev.encode_s_per_value)
    state = LiveState("fmnist-vgg", TorchHeads(model), slow, info, base)
    planner = LivePlanner(errors, base, RequirementSpec(RequirementKind.MAX_ACCURACY_LOSS, 1.0), hysteresis=0.25)
    low = planner.plan(state.profile(), 1e-6)         # 1 bit/s: sending anything takes far longer
    assert planner.scheme() == Scheme.parse("device-only"), low
    # the first plan's CPU is mostly one-time set-up: a second follows at once, whatever the band
    assert planner.needs_plan(1e-6, now=planner.planned_at)
    planner.plan(state.profile(), 1e-6)
    t = planner.planned_at
    assert not planner.needs_plan(1.1e-6, now=t) and not planner.needs_plan(0.9e-6, now=t)   # inside the band
    assert planner.needs_plan(1.3e-6) and planner.needs_plan(0.7e-6)           # outside x(1 +- 0.25)
    fast = planner.plan(dataclasses.replace(state.profile(), rtt_s=0.010), 1000.0)   # a fat pipe: the cloud
    assert planner.scheme() != Scheme.parse("device-only"), fast
    assert planner.plans == 3
    # inside the band, a new plan comes as often as the plans' CPU budget allows (the plan then
    # follows the round trip and whatever else the profile learned); leaving it re-plans at once
    assert planner.plan_cpu_s > 0
    planner.cpu_share = 0.1          # a device under a 0.1 quota: 50 x a plan's CPU between plans
    wait_s = planner.plan_cpu_s / (planner.plan_cpu_budget * 0.1)
    assert not planner.needs_plan(1000.0, planner.planned_at + 0.9 * wait_s)
    assert planner.needs_plan(1000.0, planner.planned_at + 1.1 * wait_s)
    assert planner.needs_plan(1300.0, planner.planned_at)
    # every recorded row looked up: exact, and what the GP-driven search finds too
    assert fast.proven and fast.evaluations == sum(1 for s in errors if s.is_split)
    from planner.search import Strategy
    gp = LivePlanner(errors, base, planner.requirement, strategy=Strategy.BAYES).plan(state.profile(), 1000.0)
    assert gp.scheme == fast.scheme


@pytest.mark.slow
def test_device_auto_plans_live_and_writes_its_profile(fmnist_cloud, live_db, tmp_path):
    prof = tmp_path / "live-profile.json"
    out = subprocess.run(
        [sys.executable, "-m", "device", "infer", "--cloud", fmnist_cloud.address, "--scheme", "auto",
         "--db", str(live_db), "--max-accuracy-loss", "0.5", "--dataset", "fashion-mnist", "--limit", "20",
         "--json", "--profile-out", str(prof)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(l) for l in out.stdout.strip().splitlines()]
    summary, frames = lines[-1], lines[:-1]
    assert summary["images"] == 20 and summary["plans"] >= 1
    assert summary["bandwidth_mbps"] > 0 and summary["link_rtt_s"] >= 0
    assert all(f["planned"] for f in frames) and frames[0]["replanned"]
    assert len({f["request_id"] for f in frames}) == 20
    p = load_profile(prof)                            # coinfer-plan reads what the device wrote
    assert p.model == "fmnist-vgg" and p.rtt_s is not None and len(p.partitions) == 6
    assert p.measured["bandwidth_mbps"] == pytest.approx(summary["bandwidth_mbps"])


@pytest.mark.slow
def test_auto_without_runnable_rows_names_the_fix(fmnist_cloud, tmp_path):
    empty = tmp_path / "empty.sqlite"
    AccuracyDB(empty).close()
    out = subprocess.run(
        [sys.executable, "-m", "device", "infer", "--cloud", fmnist_cloud.address, "--scheme", "auto",
         "--db", str(empty), "--dataset", "fashion-mnist", "--limit", "2"], cwd=REPO, capture_output=True,
        text=True, timeout=300)
    assert out.returncode == 2 and "expected rows for model 'fmnist-vgg'" in out.stderr, out.stderr


def test_device_run_daemon_streams_until_limit(fmnist_cloud, live_db):
    out = subprocess.run(
        [sys.executable, "-m", "device", "run", "--cloud", fmnist_cloud.address, "--db", str(live_db),
         "--max-accuracy-loss", "0.5", "--dataset", "fashion-mnist", "--loop", "--limit", "15", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(l) for l in out.stdout.strip().splitlines()]
    assert len(lines) == 16 and lines[-1]["images"] == 15
    assert all("bandwidth_mbps" in f and "scheme" in f and "top1" in f for f in lines[:-1])


@pytest.mark.slow
def test_daemon_starts_without_its_cloud_and_plans_once_it_appears(live_db, tmp_path):
    """Auto with the cloud down at start: frames fall back to device-only, then follow a plan."""
    import socket
    import time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "device", "run", "--cloud", f"127.0.0.1:{port}", "--db", str(live_db),
         "--max-accuracy-loss", "0.5", "--dataset", "fashion-mnist", "--loop", "--interval-s", "0.05",
         "--json", "--timeout-s", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from tests.conftest import CloudProcess
    lines = []
    cloud = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            frame = json.loads(line)
            lines.append(frame)
            if len(lines) == 5:
                cloud = CloudProcess("--model", "fmnist-vgg", "--profile-repeats", "1", "--port", str(port))
            if cloud is not None and frame["planned"] != "none" and not frame["fallback"]:
                break
    finally:
        proc.terminate()
        rest, err = proc.communicate(timeout=60)
        if cloud is not None:
            cloud.stop()
    assert proc.returncode == 0, err
    assert all(f["fallback"] and f["scheme"] == "device-only" for f in lines[:5])
    # once the cloud answers, the device plans (on loopback device-only may well win) and
    # frames stop falling back
    assert lines[-1]["fallback"] is None and lines[-1]["planned"] != "none", lines[-1]
    assert lines[-1]["bandwidth_mbps"] > 0
    summary = json.loads(rest.strip().splitlines()[-1])
    assert summary["images"] == len(lines) + len(rest.strip().splitlines()) - 1


class _CallLog:
    """Records the (start, end) of a real client's calls; the calls themselves go through."""

    def __init__(self, client, *names):
        import threading
        import time
        self.spans: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        self._lock = threading.Lock()
        for name in names:
            real = getattr(client, name)

            def timed(*a, _real=real, _name=name, **kw):
                t0 = time.monotonic()
                try:
                    return _real(*a, **kw)
                finally:
                    with self._lock:
                        self.spans[_name].append((t0, time.monotonic()))
            setattr(client, name, timed)


def _session(cloud_address, model, scheme, probe_interval_s):
    from device.session import LiveSession
    client = CloudClient(ClientConfig(cloud_address))
    state = LiveState("fmnist-vgg", TorchHeads(model), measure_device_times(TorchHeads(model), repeats=1), None, None)
    session = LiveSession(DeviceRunner(TorchHeads(model), "fmnist-vgg", client), client, state, None,
                          fixed=Scheme.parse(scheme), probe_interval_s=probe_interval_s)
    return client, state, session


def test_active_probes_never_share_the_link_with_a_frame(fmnist_cloud, model):
    """A probe queued behind an upload inflates the base RTT and then every bandwidth
    sample; the session keeps probes and frames apart, and probes only when frames give
    no samples (cloud-only images here are far below the passive minimum)."""
    from planner.data import load_fashion_mnist
    images = load_fashion_mnist("test")[0][:60].numpy()
    client, state, session = _session(fmnist_cloud.address, model, "cloud-only", probe_interval_s=0.02)
    calls = _CallLog(client, "infer", "probe")
    try:
        session.start()
        for img in images:
            session.process(img)
    finally:
        session.close()
        client.close()
    frames, probes = calls.spans["infer"], calls.spans["probe"]
    assert len(frames) == 60
    assert len(probes) > 4, "no active probe ran while frames gave no bandwidth samples"
    overlaps = [(f, p) for f in frames for p in probes if p[0] < f[1] and f[0] < p[1]]
    assert not overlaps, f"{len(overlaps)} probes overlapped a frame, first {overlaps[0]}"
    assert state.link.bandwidth_mbps > 0 and state.link.samples > 1

