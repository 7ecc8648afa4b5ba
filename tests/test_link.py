"""Live planning over real shaped links (root with CAP_NET_ADMIN only; skipped otherwise).

The device runs in one network namespace under a 0.1 CPU quota (a Raspberry-Pi-class
device), the cloud in another, the device->cloud direction shaped by tbf
(testbed.ShapedLink).  Accuracy rows are the shipped database's (`ft0-`: the unmodified
fmnist-vgg, which both sides run).  Namespaces are prefixed coinfer-test so they never
collide with a benchmark running beside them.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import LinkUnavailable, ShapedLink, TbfShape, require_net_admin

REPO = Path(__file__).resolve().parents[1]
PREFIX = "coinfer-test"
MODEL = "fmnist-vgg"


def _why_not() -> str | None:
    from device.cpu_quota import QuotaUnavailable, require_cpu_quota
    try:
        require_net_admin(PREFIX)
    except LinkUnavailable as e:
        return str(e)
    if shutil.which("nsenter") is None:
        return "nsenter (util-linux) not found"
    try:
        require_cpu_quota()
    except QuotaUnavailable as e:
        return f"device CPU quota: {e}"
    return None


pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.skipif(_why_not() is not None, reason=f"shaped links: {_why_not()}")]


QUOTA = 0.1          # device CPU fraction: fmnist-vgg takes ~25 ms a frame, as on a Pi-class CPU
LOSS = "0.01"        # auto: the fastest scheme losing at most 1 point of top-1 accuracy


@pytest.fixture(scope="module")
def shipped_db() -> str:
    """The shipped accuracy database.  Under a 0.1 quota device-only (~25 ms) beats sending
    anything at 0.05 Mbps (the image alone takes ~0.1 s) and loses to cloud-only at 2 Mbps
    (~10 ms): bench/results/link.md."""
    from planner.evaluate import default_db_path
    return str(default_db_path(MODEL))


def _cloud(link: ShapedLink):
    from cloud.daemon import CloudDaemon
    return CloudDaemon(["--model", MODEL, "--profile-repeats", "3", "--threads", "1"], host=link.cloud_addr,
                       prefix=link.exec_prefix(link.cloud_ns)).start()


def _device(link: ShapedLink, cloud: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([*link.exec_prefix(link.device_ns), sys.executable, "-m", "device", *args,
                             "--cloud", cloud, "--model", MODEL, "--json", "--cpu-quota", str(QUOTA)],
                            cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), **kw)


def _no_namespaces_left() -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return not any(line.startswith(f"{PREFIX}-{os.getpid()}-") for line in out.splitlines())


@pytest.mark.parametrize("rate_mbps", [0.5, 2.0])
def test_bandwidth_estimate_within_15_percent_of_goodput(rate_mbps, shipped_db):
    """The device's estimate (Probe at start-up, then passive) vs the TCP goodput of the tbf
    rate (rate x 1448/1514: tbf charges headers the application never sees; netns.md)."""
    with ShapedLink(rate_mbps, prefix=PREFIX) as link:
        cloud = _cloud(link)
        try:
            # the estimate: Probe at start-up and every 5 s, plus passive samples when the plan sends
            proc = _device(link, cloud.address, "infer", "--scheme", "auto", "--dataset", "fashion-mnist",
                           "--limit", "6", "--quiet", "--db", shipped_db, "--recipe", "ft0-",
                           "--max-accuracy-loss", LOSS)
            out, err = proc.communicate(timeout=120)
        finally:
            cloud.stop(timeout_s=15)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    goodput = TbfShape(rate_mbps).expected_goodput_mbps
    assert summary["bandwidth_mbps"] == pytest.approx(goodput, rel=0.15), (summary["bandwidth_mbps"], goodput)
    throttling = summary["cpu_throttling"]                 # the quota's CFS periods over the frames
    assert 0 <= throttling["throttled_periods"] <= throttling["periods"] and throttling["periods"] >= 1, throttling
    assert _no_namespaces_left()


def test_rate_change_switches_scheme_without_losing_frames(shipped_db):
    """`coinfer-device run --loop --scheme auto` at 0.05 Mbps, tc to 2 Mbps mid-run: the plan
    changes from device-only to sending frames to the cloud, every frame once, in order."""
    from bench.linkbench.config import LinkBenchConfig
    from bench.linkbench.rate_change import follow_rate_change
    cfg = LinkBenchConfig(model=MODEL, quota=QUOTA, db=shipped_db, recipe="ft0-",
                          requirement=("--max-accuracy-loss", LOSS))
    # a 1 s active probe period so the test is short; the bench uses the device's default (5 s)
    rc = follow_rate_change(cfg, 0.05, 2.0, progress=lambda s: None, timeout_s=40,
                            extra_device_args=("--probe-interval-s", "1"))
    assert rc["planned_before"] == "device-only", rc["frames"][:8]
    after = rc["planned_after"]
    assert rc["followed"] and after != "device-only", (after, rc["frames"][-5:])
    chk = rc["frame_check"]
    assert chk["unique_ids"] and chk["one_session"] and chk["consecutive"], chk
    assert rc["summary"] is not None and rc["summary"]["images"] == chk["frames"]
    assert {f["scheme"] for f in rc["frames"]} >= {"device-only", after}
    assert _no_namespaces_left()


def test_cloud_killed_falls_back_and_returns(shipped_db):
    """SIGKILL the cloud under a shaped link: frames run device-only (none lost); after a
    restart on the same port the planned scheme (one that uses the cloud) returns."""
    from cloud.daemon import CloudDaemon
    with ShapedLink(2.0, prefix=PREFIX) as link:
        cloud = _cloud(link)
        port = cloud.address.rsplit(":", 1)[1]
        proc = _device(link, cloud.address, "run", "--scheme", "auto", "--dataset", "fashion-mnist", "--loop",
                       "--interval-s", "0.05", "--db", shipped_db, "--recipe", "ft0-", "--max-accuracy-loss", LOSS,
                       "--probe-interval-s", "1", "--timeout-s", "2")
        frames, phase, restarted, planned = [], "up", None, None
        deadline = time.monotonic() + 120
        try:
            for line in proc.stdout:                    # bounded: deadline and SIGTERM below
                rec = json.loads(line)
                if "request_id" not in rec:
                    break
                frames.append(rec | {"phase": phase})
                if planned is None and rec["planned"] not in ("none", "device-only"):
                    planned = rec["planned"]
                if phase == "up" and sum(f["scheme"] == planned for f in frames) >= 5:
                    cloud.stop(sig=signal.SIGKILL)
                    phase = "down"
                elif phase == "down" and sum(f["phase"] == "down" and bool(f["fallback"]) for f in frames) >= 5:
                    # CloudDaemon passes --port 0 first; the later --port wins: the old address again
                    restarted = CloudDaemon(["--model", MODEL, "--profile-repeats", "1", "--threads", "1",
                                             "--port", port], host=link.cloud_addr,
                                            prefix=link.exec_prefix(link.cloud_ns)).start()
                    phase = "back"
                elif phase == "back" and sum(f["phase"] == "back" and f["scheme"] == planned
                                             and not f["fallback"] for f in frames) >= 3:
                    proc.send_signal(signal.SIGTERM)
                if time.monotonic() > deadline:
                    proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            if restarted is not None:
                restarted.stop(timeout_s=15)
            if cloud.proc.poll() is None:
                cloud.stop(timeout_s=15)
    down = [f for f in frames if f["phase"] == "down"]
    back = [f for f in frames if f["phase"] == "back"]
    assert down and all(f["scheme"] == "device-only" for f in down[1:]), down[:5]
    assert any(f["fallback"] for f in down)
    assert planned is not None, [f["planned"] for f in frames][:10]
    assert any(f["scheme"] == planned and not f["fallback"] for f in back), [f["scheme"] for f in back][-10:]
    ids = [f["request_id"] for f in frames]
    assert len(set(ids)) == len(ids)                    # no frame answered twice
    assert _no_namespaces_left()
