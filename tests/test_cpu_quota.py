"""device.cpu_quota: quota arithmetic and cgroup files (fake cgroupfs, anyone), and the real
kernel throttling a busy child to its share (root with a writable CPU cgroup only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from device import cpu_quota
from device.cpu_quota import (CgroupVersion, QuotaUnavailable, confine_to_cpu_fraction, throttling,
                              current_cgroup, detect_layout, quota_for,
                              require_cpu_quota)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fraction, expected", [
    (0.2, (20_000, 100_000)),
    (0.1, (10_000, 100_000)),
    (1.0, (100_000, 100_000)),
    (2.0, (200_000, 100_000)),
    (0.005, (1_000, 200_000)),        # quota below the kernel's 1 ms minimum: longer period
    (0.001, (1_000, 1_000_000)),
])
def test_quota_for(fraction, expected):
    assert quota_for(fraction) == expected


def test_quota_for_refuses_below_the_kernel_minimum():
    with pytest.raises(ValueError, match="fraction >= 0.001"):
        quota_for(0.0005)


@pytest.mark.parametrize("fraction", [0, -0.5, float("nan"), float("inf"), 10_000, "0.5"])
def test_fraction_is_validated(fraction):
    with pytest.raises(ValueError, match="expected 0 < fraction <="):
        confine_to_cpu_fraction(fraction)


def _fake_proc(tmp_path: Path, pid: int, text: str) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(text)
    return proc


def test_v1_files(tmp_path):
    fs = tmp_path / "cgroup"
    (fs / "cpu" / "user").mkdir(parents=True)
    (fs / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    proc = _fake_proc(tmp_path, 4242, "4:memory:/x\n2:cpu,cpuacct:/user\n0::/\n")
    q = confine_to_cpu_fraction(0.25, pid=4242, fs_root=fs, proc_root=proc)
    group = fs / "cpu" / "user" / "coinfer-4242"          # nested below the current group
    assert q.group == group and q.home == fs / "cpu" / "user"
    assert q.layout.version is CgroupVersion.V1
    assert (group / "cpu.cfs_period_us").read_text() == "100000"
    assert (group / "cpu.cfs_quota_us").read_text() == "25000"
    assert (group / "cgroup.procs").read_text() == "4242"
    # release moves the pid home (the fake cgroupfs keeps the files, so rmdir fails: logged)
    q.release()
    assert (fs / "cpu" / "user" / "cgroup.procs").read_text() == "4242"


@pytest.mark.parametrize("current, base", [("/", ""), ("/user.slice/session-1", "user.slice")])
def test_v2_files(tmp_path, current, base):
    fs = tmp_path / "cgroup"
    (fs / current.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (fs / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    (fs / base / "cgroup.subtree_control").write_text("memory\n")
    proc = _fake_proc(tmp_path, 7, f"0::{current}\n")
    q = confine_to_cpu_fraction(0.5, pid=7, name="coinfer-test", fs_root=fs, proc_root=proc)
    assert q.layout.version is CgroupVersion.V2
    assert q.group == fs / base / "coinfer-test"         # a sibling: v2 has no internal processes
    assert (q.group / "cpu.max").read_text() == "50000 100000"
    assert (fs / base / "cgroup.subtree_control").read_text() == "+cpu"
    assert (q.group / "cgroup.procs").read_text() == "7"
    q.release()
    assert (fs / current.lstrip("/") / "cgroup.procs").read_text() == "7"


def test_throttling_reads_the_groups_cpu_stat(tmp_path):
    fs = tmp_path / "cgroup"
    (fs / "cpu" / "coinfer-9").mkdir(parents=True)
    (fs / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (fs / "cpu" / "coinfer-9" / "cpu.stat").write_text("nr_periods 40\nnr_throttled 31\nthrottled_time 2500000000\n")
    proc = _fake_proc(tmp_path, 9, "2:cpu,cpuacct:/coinfer-9\n")
    assert throttling(9, fs_root=fs, proc_root=proc) == (40, 31, 2.5)
    v2 = tmp_path / "v2"
    (v2 / "g").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu\n")
    (v2 / "g" / "cpu.stat").write_text("usage_usec 9\nnr_periods 7\nnr_throttled 3\nthrottled_usec 1500\n")
    assert throttling(9, fs_root=v2, proc_root=_fake_proc(tmp_path / "p2", 9, "0::/g\n")) == (7, 3, 0.0015)
    (v2 / "g" / "cpu.stat").write_text("usage_usec 9\n")          # no bandwidth control: unknown
    assert throttling(9, fs_root=v2, proc_root=tmp_path / "p2" / "proc") is None


def test_no_cpu_controller(tmp_path):
    with pytest.raises(QuotaUnavailable, match="no cgroup CPU controller"):
        detect_layout(tmp_path)


def test_not_root_says_so(tmp_path, monkeypatch):
    fs = tmp_path / "cgroup"
    (fs / "cpu").mkdir(parents=True)
    (fs / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    proc = _fake_proc(tmp_path, 5, "2:cpu:/\n")
    monkeypatch.setattr(cpu_quota.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(cpu_quota.os, "geteuid", lambda: 1000)
    with pytest.raises(QuotaUnavailable, match=r"needs root \(running as uid 1000\)"):
        require_cpu_quota(5, fs_root=fs, proc_root=proc)
    with pytest.raises(QuotaUnavailable, match=r"needs root \(running as uid 1000\)"):
        confine_to_cpu_fraction(0.5, pid=5, fs_root=fs, proc_root=proc)


# --- the real kernel ---------------------------------------------------------------------------
def _real_cgroup_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (cgroup CPU quota)"
    try:
        layout = detect_layout()
    except QuotaUnavailable as e:
        return str(e)
    if not os.access(layout.root, os.W_OK):
        return f"{layout.root} is not writable"
    return None


needs_cgroup = pytest.mark.skipif(_real_cgroup_reason() is not None,
                                  reason=_real_cgroup_reason() or "")

BUSY = textwrap.dedent("""
    import json, sys, time
    {setup}
    sys.stdin.readline()                       # wait until the parent confined us
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < {seconds}:
        pass
    print(json.dumps({{"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0}}),
          flush=True)
""")


def _busy_child(setup: str = "", seconds: float = 1.5) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUSY.format(setup=setup, seconds=seconds)],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _share(child: subprocess.Popen) -> float:
    out, _ = child.communicate("go\n", timeout=30)
    assert child.returncode == 0
    rec = json.loads(out.strip().splitlines()[-1])
    return rec["cpu_s"] / rec["wall_s"]


@pytest.mark.root
@needs_cgroup
def test_child_gets_its_share():
    child = _busy_child()
    try:
        quota = confine_to_cpu_fraction(0.2, pid=child.pid)
        assert quota.group.is_dir()
        assert str(child.pid) in (quota.group / "cgroup.procs").read_text().split()
        share = _share(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert 0.1 <= share <= 0.35, f"busy child got {share:.3f} of a CPU under a 0.2 quota"
    assert quota.release()
    assert not quota.group.exists()


@pytest.mark.root
@needs_cgroup
def test_self_confinement_is_released_at_exit():
    name = f"coinfer-test-{os.getpid()}"
    setup = ("from device.cpu_quota import confine_to_cpu_fraction\n"
             f"confine_to_cpu_fraction(0.2, name={name!r})")
    child = _busy_child(setup)
    try:
        share = _share(child)                  # exits without release(): atexit removes it
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert 0.1 <= share <= 0.35, f"self-confined child got {share:.3f} of a CPU under 0.2"
    layout = detect_layout()
    group = layout.root / current_cgroup(os.getpid(), layout).lstrip("/") / name
    assert not group.exists(), f"cgroup left behind: {group}"
