"""testbed: tbf arithmetic (anyone), and real namespaces, shaping and tear-down (root with
CAP_NET_ADMIN only).  Every namespace here is named coinfer-test-..., so these tests never
touch a benchmark that runs beside them with the default prefix."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from testbed import namespaces, tbf
from testbed import (NetAdminUnavailable, ShapedLink, ShapingUnavailable, TbfShape, cleanup_stale,
                     require_net_admin)
from testbed.goodput import measure_transfer

REPO = Path(__file__).resolve().parents[1]
PREFIX = "coinfer-test"


@pytest.mark.parametrize("rate_mbps", [0.05, 0.5, 1.0, 2.0, 20.0])
def test_tbf_parameters(rate_mbps):
    s = TbfShape(rate_mbps)
    assert s.burst_bytes >= tbf.FRAME_BYTES                       # one whole frame fits
    assert s.burst_bytes >= s.rate_bytes_per_s / tbf.TIMER_HZ_FLOOR
    assert s.burst_bytes <= max(tbf.MIN_BURST_BYTES, s.rate_bytes_per_s / 50)  # small
    queue = s.rate_bytes_per_s * s.latency_ms / 1e3 + s.burst_bytes
    assert queue >= max(8 * tbf.FRAME_BYTES, 2 * s.rate_bytes_per_s)   # two seconds
    assert queue <= max(8 * tbf.FRAME_BYTES, 2 * s.rate_bytes_per_s) + s.rate_bytes_per_s / 100
    args = s.tbf_args()
    assert args[:3] == ["tbf", "rate", f"{round(rate_mbps * 1e6)}bit"]
    assert not s.uses_netem


def test_shape_validation():
    for bad in (dict(rate_mbps=0), dict(rate_mbps=float("nan")), dict(rate_mbps=1, loss_pct=100),
                dict(rate_mbps=1, delay_ms=-1)):
        with pytest.raises(ValueError, match="expected"):
            TbfShape(**bad)
    assert TbfShape(1, delay_ms=20, loss_pct=1).netem_args()[:5] == [
        "netem", "delay", "20ms", "loss", "1%"]


def test_without_cap_net_admin_says_so(monkeypatch):
    monkeypatch.setattr(namespaces.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    monkeypatch.setattr(namespaces, "_has_cap_net_admin", lambda: False)
    with pytest.raises(NetAdminUnavailable, match="root or CAP_NET_ADMIN"):
        require_net_admin()


# --- real namespaces -------------------------------------------------------------------------
def _net_admin_reason() -> str | None:
    try:
        require_net_admin(PREFIX)
    except NetAdminUnavailable as e:
        return str(e)
    return None


_REASON = _net_admin_reason()
needs_net_admin = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))


def _snapshot() -> tuple[list[str], list[str]]:
    """Our namespaces, and every link of this (the caller's) namespace."""
    ns = sorted(n for n in namespaces.list_netns() if n.startswith(PREFIX))
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    links = sorted(line.split(":")[1].strip() for line in out.splitlines())
    return ns, links


@pytest.mark.root
@needs_net_admin
def test_setup_and_teardown_leave_nothing():
    before = _snapshot()
    with ShapedLink(1.0, prefix=PREFIX) as link:
        assert {link.device_ns, link.cloud_ns} <= set(namespaces.list_netns())
        qdisc = subprocess.run(["tc", "-n", link.device_ns, "qdisc", "show", "dev", link.device_if],
                               capture_output=True, text=True, check=True).stdout
        assert "tbf" in qdisc and "rate 1Mbit" in qdisc
        addr = subprocess.run(["ip", "-n", link.cloud_ns, "-o", "addr", "show", link.cloud_if],
                              capture_output=True, text=True, check=True).stdout
        assert f"{link.cloud_addr}/30" in addr
        assert _snapshot()[1] == before[1]        # nothing ever appears in our namespace
    assert _snapshot() == before


@pytest.mark.root
@needs_net_admin
def test_teardown_when_body_raises_stops_processes():
    before = _snapshot()
    with pytest.raises(RuntimeError, match="boom"):
        with ShapedLink(0.5, prefix=PREFIX) as link:
            sleeper = link.run_in(link.cloud_ns, [sys.executable, "-c", "import time; time.sleep(60)"])
            raise RuntimeError("boom")
    assert sleeper.poll() is not None, "process in the namespace survived tear-down"
    assert _snapshot() == before


@pytest.mark.root
@needs_net_admin
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_tears_down_and_still_terminates(signum):
    before = _snapshot()
    # a Ctrl-C'able child even when this process runs as a background job (SIGINT ignored,
    # which children inherit)
    script = textwrap.dedent(f"""
        import signal, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from testbed import ShapedLink
        with ShapedLink(1.0, prefix={PREFIX!r}) as link:
            print(link.device_ns, flush=True)
            time.sleep(30)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        ns = child.stdout.readline().strip()
        assert ns.startswith(PREFIX) and ns in namespaces.list_netns()
        child.send_signal(signum)
        # SIGTERM: default action after clean-up; SIGINT: KeyboardInterrupt, Python dies of it
        assert child.wait(timeout=15) == -signum
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert _snapshot() == before


@pytest.mark.root
@needs_net_admin
def test_an_ignored_signal_stays_ignored():
    """Under nohup or as a background job SIGINT is ignored: the link must not take it over
    (a Ctrl-C meant for the foreground would remove the namespaces of a run that goes on)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ShapedLink(1.0, prefix=PREFIX):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL    # still torn down on SIGTERM
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.root
@needs_net_admin
def test_cleanup_stale_removes_dead_owners_only():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = f"{PREFIX}-{dead_pid}-abc123-dev"
    mine = f"{PREFIX}-{os.getpid()}-abc123-cloud"
    try:
        for ns in (stale, mine):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        removed = cleanup_stale(PREFIX)
        assert stale in removed and mine not in removed
        assert stale not in namespaces.list_netns() and mine in namespaces.list_netns()
    finally:
        for ns in (stale, mine):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


@pytest.mark.root
@needs_net_admin
def test_bulk_transfer_runs_at_the_tc_rate():
    rate = 1.0
    with ShapedLink(rate, prefix=PREFIX) as link:
        nbytes = int(link.shape.expected_goodput_mbps * 1e6 / 8 * 2.5)     # ~2.5 s
        t = measure_transfer(link, nbytes, deadline_s=10)
    assert t.complete and t.total_bytes == nbytes
    measured = t.goodput_mbps()
    assert abs(measured / rate - 1) <= 0.15, f"{measured:.3f} Mbps over a {rate} Mbps tbf"


@pytest.mark.root
@needs_net_admin
def test_set_rate_mid_run_changes_the_measured_rate():
    fast, slow, switch_s = 2.0, 0.5, 1.2
    changed_at: list[float] = []

    def slow_down(link: ShapedLink) -> None:
        time.sleep(switch_s)
        changed_at.append(time.monotonic())
        link.set_rate(slow)

    with ShapedLink(fast, prefix=PREFIX) as link:
        per_byte = tbf.TCP_PAYLOAD_PER_FRAME / tbf.FRAME_BYTES * 1e6 / 8
        nbytes = int(per_byte * (fast * switch_s + slow * 1.2))
        t = measure_transfer(link, nbytes, deadline_s=12, during=slow_down)
        assert link.shape.rate_mbps == slow
    (t_change,) = changed_at
    before = t.goodput_mbps(t.marks[0][0] + 0.2, t_change)
    after = t.goodput_mbps(t_change + 0.3, None)
    assert abs(before / fast - 1) <= 0.15, f"{before:.3f} Mbps before the change, tbf {fast}"
    assert abs(after / slow - 1) <= 0.15, f"{after:.3f} Mbps after set_rate({slow})"


@pytest.mark.root
@needs_net_admin
def test_delay_or_a_clear_refusal():
    before = _snapshot()
    try:
        with ShapedLink(2.0, delay_ms=40, prefix=PREFIX) as link:
            server = link.run_in(link.cloud_ns, [sys.executable, "-c", textwrap.dedent(f"""
                import socket
                s = socket.create_server(({link.cloud_addr!r}, 5300)); s.settimeout(10)
                print("ready", flush=True); s.accept()
            """)], stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"
            client = link.run_in(link.device_ns, [sys.executable, "-c", textwrap.dedent(f"""
                import socket, time
                t0 = time.perf_counter()
                socket.create_connection(({link.cloud_addr!r}, 5300), timeout=10)
                print(time.perf_counter() - t0)
            """)], stdout=subprocess.PIPE, text=True)
            connect_s = float(client.communicate(timeout=15)[0])
            assert connect_s >= 0.04, f"TCP handshake took {connect_s:.4f} s over a 40 ms delay"
    except ShapingUnavailable as e:
        assert "netem" in str(e)
        assert _snapshot() == before               # the failed set-up left nothing
        pytest.skip(f"kernel without netem: {e}")
    assert _snapshot() == before
