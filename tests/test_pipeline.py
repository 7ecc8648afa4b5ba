"""Frames in flight (--pipeline-depth): order, exactly-once fail-over, the stream's latency model.

Against a real cloud on an ephemeral port and real Fashion-MNIST images; timings are
reported, never asserted."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from device.app import Device, DeviceConfig
from device.client import ClientConfig, CloudClient
from device.live_planner import LivePlanner
from device.pipeline import Pipeline, run_all
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.data import load_fashion_mnist
from planner.latency import MESSAGE_OVERHEAD_BYTES, Cost, LatencyModel
from planner.models import build_model
from planner.profile import PartitionProfile
from planner.requirement import RequirementKind, RequirementSpec
from planner.scheme import CLOUD_ONLY, DEVICE_ONLY, Scheme
from planner.search import DBEvaluator, SearchConfig, Space, Strategy, build_candidates, search
from tests.conftest import REPO, CloudProcess
from tests.planner_fixtures import tiny_profile

N = 64
SPLIT = Scheme.parse("3:16:4")


@pytest.fixture(scope="module")
def data():
    x, y = load_fashion_mnist("test")
    return x[:N].numpy(), [int(v) for v in y[:N]]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_model("fmnist-vgg")


def _local_top1(runner: DeviceRunner, image) -> int:
    return int(np.argmax(runner.prepare(DEVICE_ONLY, image)[1]))


def test_depth_4_answers_a_split_scheme_as_depth_1_in_frame_order(fmnist_cloud, data, model):
    images, labels = data
    with CloudClient(ClientConfig(fmnist_cloud.address)) as c:
        runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", c)
        one = [runner.run(SPLIT, img, lab) for img, lab in zip(images, labels)]
        pipe = Pipeline(runner, depth=4, timeout_s=30)
        four = [r for r, _ in run_all(pipe, SPLIT, zip(images, labels))]
    assert [r.top1 for r in four] == [r.top1 for r in one]
    assert [r.label for r in four] == labels                       # frame order
    assert len({r.request_id for r in four + one}) == 2 * N        # one id per frame, never reused
    assert all(r.scheme == str(SPLIT) and r.fallback is None and r.rtt_s > 0 for r in four)
    assert all(r.total_s >= r.rtt_s for r in four)                 # queueing is inside the latency


def test_depth_4_mixes_local_and_remote_frames_in_order(fmnist_cloud, data, model):
    """Schemes change between frames; a device-only frame waits for the frames before it."""
    images, labels = data
    schemes = [SPLIT, DEVICE_ONLY, CLOUD_ONLY, Scheme.parse("1:8:4")] * 4
    with CloudClient(ClientConfig(fmnist_cloud.address)) as c:
        runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", c)
        pipe = Pipeline(runner, depth=3, timeout_s=30)
        got = []
        for i, s in enumerate(schemes):
            got += pipe.submit(s, images[i], labels[i], tag=i)
            assert pipe.in_flight <= 3
        got += pipe.drain()
        pipe.close()
        want = [runner.run(s, images[i]).top1 for i, s in enumerate(schemes)]
    assert [t for _, t in got] == list(range(len(schemes)))
    assert [r.scheme for r, _ in got] == [str(s) for s in schemes]
    assert [r.top1 for r, _ in got] == want


def _cli(cloud: str, *args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "device", "infer", "--cloud", cloud, "--json",
                          "--dataset", "fashion-mnist", "--limit", str(N), *args],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.strip().splitlines()]


def test_cli_depth_4_matches_depth_1_and_reports_throughput(fmnist_cloud):
    one = _cli(fmnist_cloud.address, "--scheme", str(SPLIT))
    four = _cli(fmnist_cloud.address, "--scheme", str(SPLIT), "--pipeline-depth", "4")
    assert [f["top1"] for f in four[:-1]] == [f["top1"] for f in one[:-1]]
    assert [f["label"] for f in four[:-1]] == [f["label"] for f in one[:-1]]
    assert len({f["request_id"] for f in four[:-1]}) == N
    for summary in (one[-1], four[-1]):                  # depth 1 reports it too
        assert summary["images"] == N and summary["throughput_fps"] > 0


def test_auto_at_depth_4_answers_as_depth_1(fmnist_cloud, data):
    """Auto plans between frames; each frame's answer is what its scheme gives one at a time."""
    images, labels = data
    runs = {}
    for depth in (1, 4):
        dev = Device(DeviceConfig(cloud=fmnist_cloud.address, scheme="auto", pipeline_depth=depth))
        try:
            runs[depth] = [r for r, _ in dev.frames(zip(images, labels))]
            ref = [dev.runner.run(Scheme.parse(r.scheme), img).top1 if r.fallback is None
                   else _local_top1(dev.runner, img) for r, img in zip(runs[depth], images)]
        finally:
            dev.close()
        assert [r.top1 for r in runs[depth]] == ref
        assert [r.label for r in runs[depth]] == labels
        assert len({r.request_id for r in runs[depth]}) == N
    same = [(a.top1, b.top1) for a, b in zip(runs[1], runs[4]) if a.scheme == b.scheme]
    assert same and all(a == b for a, b in same)


def test_cloud_killed_with_frames_in_flight_answers_each_frame_once(data, model):
    images, labels = data
    cloud = CloudProcess("--model", "fmnist-vgg", "--profile-repeats", "0")
    try:
        with CloudClient(ClientConfig(cloud.address, timeout_s=5)) as c:
            runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", c)
            pipe = Pipeline(runner, depth=4, timeout_s=5)
            got = []
            for i in range(N):
                if i == 20:
                    cloud.proc.send_signal(signal.SIGSTOP)      # frames 20.. wait in the stream
                if i == 23:
                    cloud.proc.send_signal(signal.SIGKILL)      # ... and it dies with them in flight
                    cloud.proc.wait(10)
                got += pipe.submit(SPLIT, images[i], labels[i], tag=i)
            got += pipe.drain()
            pipe.close()
    finally:
        cloud.stop()
    assert [t for _, t in got] == list(range(N))                # each frame once, in order
    results = [r for r, _ in got]
    assert len({r.request_id for r in results}) == N
    # frames 0-15 were answered before frame 20 could start (at most 4 pending); the cloud
    # stopped with 16-19 perhaps still in flight: those and every later frame ran device-only
    cloud_answered = [r.fallback is None for r in results]
    assert all(cloud_answered[:16]) and not any(cloud_answered[20:])
    assert cloud_answered == sorted(cloud_answered, reverse=True)      # a prefix, then fallbacks
    down = [r for r in results if r.fallback]
    assert all(r.scheme == "device-only" and r.rtt_s == 0 for r in down)
    assert all(r.scheme == str(SPLIT) and r.rtt_s > 0 for r in results if not r.fallback)
    assert pipe.broken >= 1
    first = len(results) - len(down)
    assert [r.top1 for r in down] == [_local_top1(runner, img) for img in images[first:]]


# -- the latency model's stream view ------------------------------------------------------------
def _disagreeing_profile():
    """At 0.032 Mbps (4000 bytes/s): 0:8:8 sends 800 bytes (0.2 s, its slowest stage) behind a
    0.01 s head, before a 0.01 s tail: 0.27 s with the 0.05 s RTT.  1:16:8 spends 0.1 s in each
    stage (400 bytes): 0.35 s, yet a stream of it answers every 0.1 s against 0.2 s."""
    parts = (PartitionProfile(0, 8, False, 10, 10, device_head_s=0.01, cloud_tail_s=0.01),
             PartitionProfile(1, 16, True, 5, 5, device_head_s=0.1, cloud_tail_s=0.1))
    return tiny_profile(partitions=parts, device_full_model_s=2.0, cloud_only_upload_bytes=100_000, rtt_s=0.05)


def test_stage_breakdown_sums_to_the_latency_prediction():
    prof = _disagreeing_profile()
    for cost in Cost:
        m = LatencyModel.from_profile(prof, 0.01, cost=cost, depth=4)
        rows = [(p, c, b) for p in range(2) for c in (1, 4, 8) for b in (1, 4, 8)]
        for s in [DEVICE_ONLY, CLOUD_ONLY, *(Scheme.split(*r) for r in rows)]:
            st = m.stages(s)
            assert st.total_s == m.latency_s(s)
            assert st.period_s(1) == m.latency_s(s)          # one frame in flight: no overlap
            assert st.period_s(4) <= st.total_s and st.stream_latency_s(4) >= st.total_s
        assert list(m.split_costs(*np.array(rows).T)) == [m.cost_s(Scheme.split(*r)) for r in rows]


def test_small_messages_occupy_the_link_with_their_overhead():
    """A 100-byte frame at 0.01 Mbps measured a 0.2 s round trip: its headers and the answer's
    acknowledgement (MESSAGE_OVERHEAD_BYTES, 0.117 s here) sat on the link inside it, so a
    stream's uplink stage is 0.08 + 0.117 s; a latency counts them once, in the round trip."""
    prof = _disagreeing_profile()
    m = LatencyModel.from_profile(prof, 0.01, rtt_s=0.2, cost=Cost.THROUGHPUT, depth=4)
    st = m.stages(Scheme.parse("0:1:8"))
    overhead = MESSAGE_OVERHEAD_BYTES * 8 / 0.01e6
    assert st.message_s == pytest.approx(overhead) and st.rtt_s == 0.2
    assert st.bottleneck_s == pytest.approx(st.uplink_s + overhead)
    assert st.total_s == m.latency_s(Scheme.parse("0:1:8"))                 # the latency is unchanged
    # the overhead is never more than the round trip that contains it
    tight = LatencyModel.from_profile(prof, 0.01, rtt_s=0.01, cost=Cost.THROUGHPUT, depth=4)
    assert tight.stages(Scheme.parse("0:1:8")).message_s == 0.01


def _plan(cost: Cost, depth: int):
    prof = _disagreeing_profile()
    errors = {Scheme.parse("0:8:8"): 0.10, Scheme.parse("1:16:8"): 0.10}
    lat = LatencyModel.from_profile(prof, 0.032, cost=cost, depth=depth)
    req = RequirementSpec(RequirementKind.MAX_ACCURACY_LOSS, 0.01).build(lat)
    return lat, search(lat, build_candidates(lat, Space.DB, errors), req, DBEvaluator(errors, 0.10),
                       SearchConfig(), Strategy.EXHAUSTIVE)


def test_throughput_objective_picks_the_lower_slowest_stage():
    lat_model, by_latency = _plan(Cost.LATENCY, 4)
    thr_model, by_throughput = _plan(Cost.THROUGHPUT, 4)
    a, b = by_latency.scheme, by_throughput.scheme
    assert (a, b) == (Scheme.parse("0:8:8"), Scheme.parse("1:16:8"))
    assert lat_model.latency_s(a) < lat_model.latency_s(b)                    # a: the lower sum
    assert thr_model.stages(b).bottleneck_s < thr_model.stages(a).bottleneck_s  # b: the faster stream
    j = by_throughput.to_json()
    assert j["cost"] == "throughput" and j["pipeline_depth"] == 4 and j["predicted_fps"] > 0
    assert sum(j["stages_s"].values()) == pytest.approx(j["predicted_frame_latency_s"])
    # one frame in flight: a stream's period is a frame's latency, and the two objectives agree
    assert _plan(Cost.THROUGHPUT, 1)[1].scheme == a
    # the device's planner passes the objective through
    errors = {Scheme.parse("0:8:8"): 0.10, Scheme.parse("1:16:8"): 0.10}
    spec = RequirementSpec(RequirementKind.MAX_ACCURACY_LOSS, 0.01)
    live = LivePlanner(errors, 0.10, spec, objective=Cost.THROUGHPUT, pipeline_depth=4)
    assert live.plan(_disagreeing_profile(), 0.032).scheme == b
    assert LivePlanner(errors, 0.10, spec).plan(_disagreeing_profile(), 0.032).scheme == a


def test_a_cloud_that_stops_answering_passes_the_deadline_and_each_frame_runs_once(data, model):
    images, labels = data
    cloud = CloudProcess("--model", "fmnist-vgg", "--profile-repeats", "0")
    try:
        with CloudClient(ClientConfig(cloud.address, timeout_s=1)) as c:
            runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", c)
            pipe = Pipeline(runner, depth=4, timeout_s=1)
            got = pipe.submit(SPLIT, images[0], labels[0], tag=0) + pipe.drain()
            cloud.proc.send_signal(signal.SIGSTOP)            # alive, connected, silent
            for i in range(1, 7):
                got += pipe.submit(SPLIT, images[i], labels[i], tag=i)
            got += pipe.drain()
            pipe.close()
    finally:
        cloud.proc.send_signal(signal.SIGCONT)
        cloud.stop()
    assert [t for _, t in got] == list(range(7))
    assert got[0][0].fallback is None
    assert all(r.fallback and "DEADLINE_EXCEEDED" in r.fallback and r.scheme == "device-only" for r, _ in got[1:])
    assert len({r.request_id for r, _ in got}) == 7


def test_plan_search_objective_throughput_reports_the_stream(capsys):
    from planner.__main__ import main
    from tests.planner_fixtures import SEED_PROFILE, seed_path
    prof, acc = seed_path(SEED_PROFILE), seed_path("accuracy_search.txt")
    rc = main(["search", "--profile", str(prof), "--db", str(acc), "--space", "db", "--bandwidth-mbps", "0.5",
               "--accuracy-loss", "0.05", "--strategy", "exhaustive", "--objective", "throughput",
               "--pipeline-depth", "4", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and out["cost"] == "throughput" and out["pipeline_depth"] == 4
    assert out["predicted_latency_s"] == pytest.approx(max(out["stages_s"]["device"], out["stages_s"]["uplink"],
                                                           out["stages_s"]["cloud"]))
    assert out["predicted_fps"] == pytest.approx(1 / out["predicted_latency_s"])
    assert sum(out["stages_s"].values()) == pytest.approx(out["predicted_frame_latency_s"])
