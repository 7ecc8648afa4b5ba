"""A real two-node Ray cluster on this machine behind one front door (slow).

`ray start --head` and `ray start --address`, each node declaring one `coinfer` resource;
`coinfer-cloud serve --engine ray --ray-address ... --replica-resources '{"coinfer": 1}'`
pins one replica per node. A device streams Fashion-MNIST; both replicas serve; the second
node's raylet is killed mid-stream: no frame is lost (the front re-dispatches what the dead
replica held), the predictions equal the plain engine's, and the head's replica carries the
rest. Every process the test started is stopped by its pid.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cloud.daemon import CloudDaemon
from tests.conftest import REPO
from tests.ray_cluster import RAY_ENV, LocalRayCluster
from tests.test_metrics import free_port, scrape, value
from tests.test_ray_engine import alive, descendants, device_infer, ray_installed

SCHEME = "1:8:4"
# what is killed mid-stream: the raylet alone (its workers answer what they hold, then exit), or
# the whole node at once (raylet and workers). For the latter each replica holds a request 0.2 s
# waiting for a batch to fill, so the lost node's replica nearly always holds a frame when it goes.
# Whether that frame comes back through the front's re-dispatch (coinfer_replica_redispatched_total)
# or Ray Serve's own routing varied from run to run here, so it is printed, not asserted; that no
# frame is lost is asserted.
CASES = {"raylet": dict(frames=1000, kill_after=200, args=[]),
         "whole-node": dict(frames=100, kill_after=30, args=["--batch-wait-s", "0.2", "--batch-max-size", "64"])}


def replica_counts(port: int) -> dict[str, float]:
    return {dict(labels)["replica"]: v for (name, labels), v in scrape(port).items()
            if name == "coinfer_replica_requests_total"}


@pytest.fixture
def two_node_cluster():
    cluster = LocalRayCluster()
    try:
        cluster.start_head({"coinfer": 1})
        cluster.second = cluster.add_node({"coinfer": 1})
        yield cluster
    finally:
        left = cluster.stop()
        assert not left, f"Ray processes left behind: {left}"


@pytest.mark.slow
@ray_installed
@pytest.mark.parametrize("kill", list(CASES))
def test_two_nodes_serve_and_losing_one_loses_no_frame(fmnist_cloud, two_node_cluster, kill):
    FRAMES, KILL_AFTER, extra = CASES[kill]["frames"], CASES[kill]["kill_after"], CASES[kill]["args"]
    plain_top1, plain = device_infer(fmnist_cloud.address, SCHEME, limit=FRAMES)
    metrics_port = free_port()
    cloud = CloudDaemon(["--model", "fmnist-vgg", "--profile-repeats", "1", "--engine", "ray",
                         "--ray-address", two_node_cluster.address, "--replicas", "2",
                         "--replica-resources", '{"coinfer": 1}', "--metrics-port", str(metrics_port),
                         *extra],
                        env=RAY_ENV, drain_stderr=True).start()
    device = None
    try:
        device = subprocess.Popen(
            [sys.executable, "-m", "device", "infer", "--cloud", cloud.address, "--model", "fmnist-vgg",
             "--scheme", SCHEME, "--dataset", "fashion-mnist", "--limit", str(FRAMES), "--pipeline-depth", "2",
             "--json"], cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = [device.stdout.readline() for _ in range(KILL_AFTER)]
        at_kill = replica_counts(metrics_port)
        assert len(at_kill) == 2 and min(at_kill.values()) > 0, f"both nodes' replicas serve: {at_kill}"
        raylet = two_node_cluster.raylet_pid(two_node_cluster.second)
        node_pids = descendants(raylet)          # its workers, the replica among them
        for pid in [raylet, *node_pids] if kill == "whole-node" else [raylet]:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while any(alive(p) for p in node_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in node_pids), "the second node's workers outlived its raylet by 60 s"
        at_gone = replica_counts(metrics_port)   # the lost replica's worker has exited
        rest, err = device.communicate(timeout=300)
        assert device.returncode == 0, err[-2000:] + "".join(list(cloud.stderr_tail)[-20:])
        lines += rest.strip().splitlines()
        frames = [json.loads(line) for line in lines[:-1]]
        summary = json.loads(lines[-1])
        after = scrape(metrics_port)
        at_end = replica_counts(metrics_port)
    finally:
        if device is not None and device.poll() is None:
            device.kill()
        code = cloud.stop()
    assert [f["fallback"] for f in frames] == [None] * FRAMES, ("every frame answered by the cloud",
                                                                 "".join(list(cloud.stderr_tail)[-20:]))
    assert [f["top1"] for f in frames] == plain_top1
    assert summary["images"] == FRAMES and summary["top1_accuracy"] == plain["top1_accuracy"]
    grew = {r: at_end[r] - at_gone[r] for r in at_gone}
    survivor, lost = max(grew, key=grew.get), min(grew, key=grew.get)
    assert grew[lost] == 0, f"the lost node's replica answered after its worker exited: {grew}"
    assert grew[survivor] >= FRAMES - sum(at_gone.values()), f"the survivor carries the rest: {grew}"
    assert sum(at_gone.values()) < 0.8 * FRAMES, f"the node was lost mid-stream: {at_gone}"
    codes = {dict(labels)["code"]: v for (name, labels), v in after.items() if name == "coinfer_requests_total"
             and dict(labels)["method"] == "InferStream"}
    assert codes == {"OK": pytest.approx(codes.get("OK", 0))} and codes["OK"] >= FRAMES, codes
    print(f"re-dispatched {value(after, 'coinfer_replica_redispatched_total'):g}, replicas at the kill {at_kill}, "
          f"when its worker had exited {at_gone}, at the end {at_end}")
    assert value(after, "coinfer_replica_unavailable_total") == 0
    assert code == 0, "the daemon exits 0 on SIGTERM with a node lost"
