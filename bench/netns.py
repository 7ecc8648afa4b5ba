"""A real, shaped device->cloud link: two network namespaces joined by a veth pair.

    with ShapedLink(rate_mbps=1.0) as link:          # needs root / CAP_NET_ADMIN
        cloud = link.run_in(link.cloud_ns, ["python", "-m", "cloud", "serve", ...])
        link.set_rate(0.5)                           # while traffic flows

Topology (nothing is added to the caller's own namespace, not even for a moment: the veth
pair is created inside the device namespace with its peer placed straight into the cloud
namespace, so tearing down the two namespaces removes everything):

    [PREFIX-PID-TOKEN-dev]  cf-dev 10.213.7.1/30 ==veth== 10.213.7.2/30 cf-cloud  [PREFIX-PID-TOKEN-cloud]
                            egress shaped: [netem delay/loss] -> tbf rate

Only the device->cloud direction (egress of the device-side veth) is shaped; replies travel
at veth speed, as the uplink is what the partition choice trades against.

tbf parameters, chosen for rates from ~0.05 to a few Mbps (see `TbfShape`):
- burst: the bucket must hold one whole frame (MTU 1500 + 14 bytes Ethernet header) or tbf
  cannot send it; larger buckets let that many bytes out at line speed after an idle period,
  which inflates short transfers (at 0.05 Mbps = 6250 B/s a 16 KB bucket would be 2.6 s of
  "free" link).  So burst = max(1600 B, rate / 100 Hz): one frame plus slack, and never less
  than one timer tick at HZ=100 worth of bytes (the classic tbf rule; this kernel has HZ=250
  and hrtimers, so at <= 2 Mbps the one-frame floor decides).
- latency (queue depth = rate * latency + burst): two seconds of traffic (at least 8 frames).
  Deeper queues avoid drops for whole messages at >= 0.5 Mbps (1 Mbps, 250 KB transfer: 100 ms
  of queue -> 184 drops, 512 ms -> 44, 2 s -> 0; goodput 0.999 of expected in all, SACK
  recovers), but at 0.05 Mbps a queue that holds the whole initial window (10 frames = 2.4 s)
  makes TCP time out spuriously and resend (measured goodput 0.916 of expected with a 42 s
  queue vs 0.974 with 2 s).  Two seconds is the depth that does best at both ends.  The
  project's traffic is one gRPC connection with one request in flight, so the queue is empty
  when a request starts and whatever it does not hold waits in the socket buffer instead.
- netem (delay, loss) is the root with tbf as its child (`parent 1:1`), the arrangement the
  Linux Foundation netem guide gives for "delay + rate": packets are delayed first, then paced
  at the rate, so the queueing delay of tbf adds to the fixed delay instead of being hidden in
  it.  Loss is applied before the rate limiter (a lost packet costs no link time).  Kernels
  without sch_netem (CONFIG_NET_SCH_NETEM unset, as on the development VM) raise
  `ShapingUnavailable` when delay or loss is asked for; rate alone needs only sch_tbf.

Safety: every loop is bounded in count and time; namespaces are removed in `__exit__`, on
SIGINT/SIGTERM (the handler tears down, restores the previous handler and hands the signal to
it) and at interpreter exit; `cleanup_stale(prefix)` removes namespaces of this naming scheme
left by dead processes.  Addresses come from one project /30 and exist only inside the two
namespaces; nothing routes to or from the caller's network.

`python -m bench.netns` measures TCP goodput against the tbf rate and the slowdown of the
device model under a CPU quota, and writes bench/results/netns.md.
"""
from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

# The project's own /30: exactly two hosts, used only inside namespaces this module creates.
PROJECT_SUBNET = ipaddress.ip_network("10.213.7.0/30")
DEVICE_ADDR = str(PROJECT_SUBNET.network_address + 1)   # 10.213.7.1
CLOUD_ADDR = str(PROJECT_SUBNET.network_address + 2)    # 10.213.7.2
DEVICE_IF = "cf-dev"     # interface names exist only inside the namespaces
CLOUD_IF = "cf-cloud"
DEFAULT_PREFIX = "coinfer"

FRAME_BYTES = 1514                # MTU 1500 + Ethernet header: what tbf charges per full packet
TCP_PAYLOAD_PER_FRAME = 1448      # 1500 - 20 (IPv4) - 32 (TCP with timestamps)
MIN_BURST_BYTES = 1600            # one full frame plus slack
TIMER_HZ_FLOOR = 100              # burst >= one tick of bytes at HZ=100 (worst common HZ)
MIN_QUEUE_BYTES = 8 * FRAME_BYTES # queue at least 8 full frames...
QUEUE_S = 2.0                     # ...or two seconds of traffic, whichever is larger
CMD_TIMEOUT_S = 10.0              # any single ip/tc command
TERM_GRACE_S = 3.0                # SIGTERM -> SIGKILL for processes left in a namespace
TBF_HANDLE = "10:"
NETEM_HANDLE = "1:"

_NS_RE = r"^{prefix}-(?P<pid>\d+)-(?P<token>[0-9a-f]+)-(?P<side>dev|cloud)$"


class LinkUnavailable(RuntimeError):
    """Shaped links cannot be built here; the message says why (CLI: exit status 2)."""


class NetAdminUnavailable(LinkUnavailable):
    """Not root / no CAP_NET_ADMIN / `ip netns add` refused / ip or tc missing."""


class ShapingUnavailable(LinkUnavailable):
    """The kernel lacks a qdisc that the requested shape needs (e.g. netem for delay/loss)."""


class CommandFailed(RuntimeError):
    """An `ip` or `tc` command failed after the link was set up."""


@dataclass(frozen=True)
class TbfShape:
    """What the device->cloud direction looks like; tc arguments derive from it."""
    rate_mbps: float          # tbf rate, 10^6 bit/s, counted on whole Ethernet frames
    delay_ms: float = 0.0     # netem fixed one-way delay (0: no netem)
    loss_pct: float = 0.0     # netem random loss, percent of packets (0: no netem)

    def __post_init__(self) -> None:
        if not (self.rate_mbps > 0 and math.isfinite(self.rate_mbps)):
            raise ValueError(f"expected rate_mbps > 0, got {self.rate_mbps!r}")
        if not (0 <= self.delay_ms < 60_000):
            raise ValueError(f"expected 0 <= delay_ms < 60000, got {self.delay_ms!r}")
        if not (0 <= self.loss_pct < 100):
            raise ValueError(f"expected 0 <= loss_pct < 100, got {self.loss_pct!r}")

    @property
    def rate_bytes_per_s(self) -> float:
        return self.rate_mbps * 1e6 / 8

    @property
    def rate_bit(self) -> int:
        return max(1, round(self.rate_mbps * 1e6))       # tc "bit" = bit/s, SI

    @property
    def burst_bytes(self) -> int:
        return max(MIN_BURST_BYTES, math.ceil(self.rate_bytes_per_s / TIMER_HZ_FLOOR))

    @property
    def queue_bytes(self) -> int:
        return max(MIN_QUEUE_BYTES, math.ceil(self.rate_bytes_per_s * QUEUE_S))

    @property
    def latency_ms(self) -> int:
        """tbf `latency`: the time the queue (beyond the bucket) takes to drain at the rate."""
        return max(1, math.ceil((self.queue_bytes - self.burst_bytes) / self.rate_bytes_per_s * 1e3))

    @property
    def uses_netem(self) -> bool:
        return self.delay_ms > 0 or self.loss_pct > 0

    @property
    def expected_goodput_mbps(self) -> float:
        """TCP payload rate of a bulk transfer: full frames carry 1448 of 1514 bytes."""
        return self.rate_mbps * TCP_PAYLOAD_PER_FRAME / FRAME_BYTES

    def tbf_args(self) -> list[str]:
        return ["tbf", "rate", f"{self.rate_bit}bit", "burst", str(self.burst_bytes),
                "latency", f"{self.latency_ms}ms"]

    def netem_args(self) -> list[str]:
        args = ["netem"]
        if self.delay_ms > 0:
            args += ["delay", f"{self.delay_ms:g}ms"]
        if self.loss_pct > 0:
            args += ["loss", f"{self.loss_pct:g}%"]
        # netem's own queue must hold everything in flight during the delay
        return args + ["limit", "10000"]


def _run(argv: list[str], check: bool = True, timeout_s: float = CMD_TIMEOUT_S
         ) -> subprocess.CompletedProcess:
    log.debug("run %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError as e:
        raise NetAdminUnavailable(f"{argv[0]} not found: install iproute2") from e
    if check and proc.returncode != 0:
        raise CommandFailed(f"`{' '.join(argv)}` failed ({proc.returncode}): "
                            f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _has_cap_net_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 12))   # CAP_NET_ADMIN = 12
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def require_net_admin(prefix: str = DEFAULT_PREFIX) -> None:
    """Raise NetAdminUnavailable (with the reason) unless namespaces can be made here."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetAdminUnavailable(f"`{tool}` not found: install iproute2 (apt-get install iproute2)")
    if not _has_cap_net_admin():
        raise NetAdminUnavailable(
            f"shaped links need root or CAP_NET_ADMIN (running as uid {os.geteuid()} without it)")
    probe = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}-dev"
    proc = _run(["ip", "netns", "add", probe], check=False)
    if proc.returncode != 0:
        raise NetAdminUnavailable(f"`ip netns add` failed: {proc.stderr.strip()}")
    _run(["ip", "netns", "delete", probe], check=False)


def _list_netns() -> list[str]:
    proc = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_pids(ns: str, grace_s: float = TERM_GRACE_S) -> None:
    """Stop every process still inside `ns` (all were started in it by us): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in _run(["ip", "netns", "pids", ns], check=False).stdout.split()
                if p.isdigit() and int(p) != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)


def _delete_netns(ns: str) -> None:
    _kill_netns_pids(ns)
    proc = _run(["ip", "netns", "delete", ns], check=False)
    if proc.returncode != 0 and ns in _list_netns():
        log.warning("could not delete namespace %s: %s", ns, proc.stderr.strip())


def cleanup_stale(prefix: str = DEFAULT_PREFIX, include_live: bool = False) -> list[str]:
    """Delete namespaces named by this module with `prefix` whose creating process is gone.

    `include_live=True` also removes those of running processes (only for a manual clean-up:
    another benchmark may be using them).  Returns the names removed.
    """
    pattern = re.compile(_NS_RE.format(prefix=re.escape(prefix)))
    removed = []
    for ns in _list_netns():
        m = pattern.match(ns)
        if m is None:
            continue
        pid = int(m["pid"])
        if include_live or (pid != os.getpid() and not _pid_alive(pid)):
            _delete_netns(ns)
            removed.append(ns)
    if removed:
        log.info("removed stale namespaces: %s", ", ".join(removed))
    return removed


def netns_exec_prefix(ns: str) -> list[str]:
    """argv prefix entering only the network namespace `ns` (keeps /sys/fs/cgroup visible)."""
    return ["nsenter", f"--net=/run/netns/{ns}", "--"]


class ShapedLink:
    """Two namespaces (device, cloud) joined by a veth pair; device->cloud shaped by tc.

    A context manager; `close()` is idempotent and also runs on SIGINT/SIGTERM and at exit.
    """

    def __init__(self, rate_mbps: float, delay_ms: float = 0.0, loss_pct: float = 0.0,
                 prefix: str = DEFAULT_PREFIX):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.]*(-[A-Za-z0-9_.]+)*", prefix):
            raise ValueError(f"expected a prefix of letters, digits, '-', '_', '.', got {prefix!r}")
        self.shape = TbfShape(rate_mbps, delay_ms, loss_pct)
        self.prefix = prefix
        stem = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.device_ns = f"{stem}-dev"
        self.cloud_ns = f"{stem}-cloud"
        self.device_addr = DEVICE_ADDR
        self.cloud_addr = CLOUD_ADDR
        self.device_if = DEVICE_IF
        self.cloud_if = CLOUD_IF
        self._created: list[str] = []              # namespaces that exist, in creation order
        self._procs: list[subprocess.Popen] = []
        self._previous_handlers: dict[int, object] = {}
        self._lock = threading.Lock()
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "ShapedLink":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> "ShapedLink":
        require_net_admin(self.prefix)
        self._install_handlers()
        atexit.register(self.close)
        try:
            for ns in (self.device_ns, self.cloud_ns):
                _run(["ip", "netns", "add", ns])
                self._created.append(ns)
            _run(["ip", "-n", self.device_ns, "link", "add", DEVICE_IF, "type", "veth",
                  "peer", "name", CLOUD_IF, "netns", self.cloud_ns])
            plen = PROJECT_SUBNET.prefixlen
            for ns, ifname, addr in ((self.device_ns, DEVICE_IF, DEVICE_ADDR),
                                     (self.cloud_ns, CLOUD_IF, CLOUD_ADDR)):
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
                _run(["ip", "-n", ns, "addr", "add", f"{addr}/{plen}", "dev", ifname])
                _run(["ip", "-n", ns, "link", "set", ifname, "up"])
            self._add_qdiscs()
        except BaseException:
            self.close()
            raise
        log.info("shaped link %s -> %s at %g Mbps (burst %d B, latency %d ms)", self.device_ns,
                 self.cloud_ns, self.shape.rate_mbps, self.shape.burst_bytes, self.shape.latency_ms)
        return self

    def close(self) -> None:
        """Stop processes in the namespaces, delete them, restore signal handlers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            for proc in self._procs:
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + TERM_GRACE_S
            for proc in self._procs:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=TERM_GRACE_S)
            for ns in reversed(self._created):
                _delete_netns(ns)
            self._created.clear()
        finally:
            self._restore_handlers()
            atexit.unregister(self.close)

    # --- shaping -----------------------------------------------------------------------------
    def _tc(self, *args: str) -> subprocess.CompletedProcess:
        return _run(["tc", "-n", self.device_ns, "qdisc", *args])

    def _tbf_parent(self) -> list[str]:
        return ["parent", f"{NETEM_HANDLE}1"] if self.shape.uses_netem else ["root"]

    def _add_qdiscs(self) -> None:
        if self.shape.uses_netem:
            try:
                self._tc("add", "dev", DEVICE_IF, "root", "handle", NETEM_HANDLE,
                         *self.shape.netem_args())
            except CommandFailed as e:
                raise ShapingUnavailable(
                    f"delay/loss need the netem qdisc, which this kernel refused "
                    f"(CONFIG_NET_SCH_NETEM?): {e}") from e
        self._tc("add", "dev", DEVICE_IF, *self._tbf_parent(), "handle", TBF_HANDLE,
                 *self.shape.tbf_args())

    def set_rate(self, rate_mbps: float) -> None:
        """Change the device->cloud rate in place (`tc qdisc change`); queued packets stay."""
        self._require_open()
        shape = replace(self.shape, rate_mbps=rate_mbps)
        self._tc("change", "dev", DEVICE_IF, *self._tbf_parent(), "handle", TBF_HANDLE,
                 *shape.tbf_args())
        self.shape = shape
        log.info("rate of %s now %g Mbps", self.device_ns, rate_mbps)

    def qdisc_stats(self) -> dict[str, int]:
        """Counters of the tbf on the device side: bytes, packets, drops, overlimits, backlog."""
        self._require_open()
        out = _run(["tc", "-n", self.device_ns, "-s", "-j", "qdisc", "show", "dev", DEVICE_IF]).stdout
        for q in json.loads(out):
            if q.get("kind") == "tbf":
                return {k: int(q.get(k, 0)) for k in
                        ("bytes", "packets", "drops", "overlimits", "backlog", "qlen")}
        raise CommandFailed(f"no tbf qdisc on {DEVICE_IF} in {self.device_ns}")

    # --- processes -----------------------------------------------------------------------------
    def exec_prefix(self, ns: str) -> list[str]:
        """argv prefix that runs a command in `ns`'s network (for helpers that take a prefix).

        `nsenter --net` switches only the network namespace; `ip netns exec` would also
        remount /sys and hide /sys/fs/cgroup, which the device's --cpu-quota needs.
        """
        if ns not in (self.device_ns, self.cloud_ns):
            raise ValueError(f"expected {self.device_ns!r} or {self.cloud_ns!r}, got {ns!r}")
        return netns_exec_prefix(ns)

    def run_in(self, ns: str, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start argv inside namespace `ns`; it is terminated (then killed) at close()."""
        self._require_open()
        proc = subprocess.Popen([*self.exec_prefix(ns), *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def _require_open(self) -> None:
        if self._closed or not self._created:
            raise RuntimeError("expected an open ShapedLink (use it inside `with`)")

    # --- signals -------------------------------------------------------------------------------
    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return                  # signal handlers can only be set there; atexit still applies
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue            # ignored (e.g. SIGINT of a background job): stays ignored
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            if signal.getsignal(signum) == self._on_signal:   # not if someone replaced ours
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame) -> None:
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        log.warning("signal %d: removing namespaces %s, %s", signum, self.device_ns, self.cloud_ns)
        self.close()                                          # also restores `previous`
        if callable(previous):
            previous(signum, frame)                           # e.g. KeyboardInterrupt for SIGINT
        elif previous in (signal.SIG_DFL, None):
            signal.raise_signal(signum)                       # default action, now unhooked


# --- measurement ---------------------------------------------------------------------------------
_SERVER = textwrap.dedent("""
    import json, socket, sys, time
    host, port, deadline_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    end = time.monotonic() + deadline_s
    srv = socket.create_server((host, port))
    srv.settimeout(deadline_s)
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(max(0.1, end - time.monotonic()))
    marks, total = [], 0
    while time.monotonic() < end:
        try:
            data = conn.recv(65536)
        except socket.timeout:
            break
        if not data:
            break
        total += len(data)
        marks.append((time.monotonic(), total))
    print(json.dumps({"marks": marks, "eof": time.monotonic() < end}), flush=True)
""")

_CLIENT = textwrap.dedent("""
    import socket, sys, time
    host, port, nbytes, deadline_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    end = time.monotonic() + deadline_s
    for _ in range(50):
        try:
            s = socket.create_connection((host, port), timeout=deadline_s)
            break
        except OSError:
            time.sleep(0.05)
    else:
        sys.exit("could not connect")
    chunk = bytes(8192)
    sent = 0
    while sent < nbytes and time.monotonic() < end:
        sent += s.send(chunk[: min(len(chunk), nbytes - sent)])
    s.shutdown(socket.SHUT_WR)
    s.close()
""")


@dataclass(frozen=True)
class Transfer:
    """Receiver-side record of one bulk TCP transfer device -> cloud."""
    marks: tuple[tuple[float, int], ...]   # (time.monotonic() s, cumulative payload bytes)
    complete: bool                         # EOF seen before the deadline

    @property
    def total_bytes(self) -> int:
        return self.marks[-1][1] if self.marks else 0

    def goodput_mbps(self, start_s: float | None = None, end_s: float | None = None) -> float:
        """Payload rate between two monotonic times (default: first to last byte).

        Bytes in the first recv (the tbf bucket's burst at line speed) are not counted.
        """
        pts = [(t, b) for t, b in self.marks
               if (start_s is None or t >= start_s) and (end_s is None or t <= end_s)]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            raise ValueError(f"expected >= 2 receive marks in the window, got {len(pts)}")
        return (pts[-1][1] - pts[0][1]) * 8 / (pts[-1][0] - pts[0][0]) / 1e6


def measure_transfer(link: ShapedLink, nbytes: int, deadline_s: float, port: int = 5201,
                     during=None) -> Transfer:
    """Send `nbytes` device -> cloud over TCP; `during(link)` runs while the bytes flow.

    Server and client are small Python processes started in the two namespaces; both stop at
    `deadline_s` whatever happens.
    """
    py = sys.executable
    server = link.run_in(link.cloud_ns, [py, "-c", _SERVER, link.cloud_addr, str(port),
                                         str(deadline_s)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"throughput server did not start: {server.stderr.read().strip()}")
        client = link.run_in(link.device_ns, [py, "-c", _CLIENT, link.cloud_addr, str(port),
                                              str(nbytes), str(deadline_s)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if during is not None:
            during(link)
        out, err = server.communicate(timeout=deadline_s + 5)
        client.wait(timeout=5)
    finally:
        for p in (server,):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
    if not out.strip():
        raise RuntimeError(f"throughput server said nothing: {err.strip()}")
    rec = json.loads(out.strip().splitlines()[-1])
    return Transfer(tuple((float(t), int(b)) for t, b in rec["marks"]), bool(rec["eof"]))


def measure_goodput(rate_mbps: float, seconds: float = 2.5, repeats: int = 1,
                    prefix: str = DEFAULT_PREFIX) -> list[float]:
    """TCP goodput (Mbps) of `repeats` bulk transfers of ~`seconds` each at the tbf rate."""
    shape = TbfShape(rate_mbps)
    nbytes = int(shape.expected_goodput_mbps * 1e6 / 8 * seconds)
    with ShapedLink(rate_mbps, prefix=prefix) as link:
        return [measure_transfer(link, nbytes, deadline_s=3 * seconds + 5, port=5201 + i)
                .goodput_mbps() for i in range(repeats)]


# --- benchmark -----------------------------------------------------------------------------------
_QUOTA_PROBE = textwrap.dedent("""
    import json, statistics, sys, time, torch
    from planner.models import build_model
    from device.cpu_quota import confine_to_cpu_fraction
    fraction, repeats = float(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    model = build_model("vgg16_bn", use_default_weights=False).eval()
    x = torch.randn(1, 3, 224, 224)                    # (N, C, H, W) float32
    def timed():
        with torch.inference_mode():
            model(x)                                   # warm-up
            out = []
            for _ in range(repeats):
                t0 = time.perf_counter(); model(x); out.append(time.perf_counter() - t0)
        return out
    free = timed()
    quota = confine_to_cpu_fraction(fraction)
    confined = timed()
    quota.release()
    print(json.dumps({"free_s": free, "confined_s": confined}))
""")


def measure_quota_slowdown(fraction: float = 0.1, repeats: int = 3) -> dict:
    """vgg16_bn forward (1x3x224x224, one thread) without and then under the CPU quota, one process."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _QUOTA_PROBE, str(fraction), str(repeats)],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"quota probe failed: {proc.stderr.strip()[-500:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    free, confined = statistics.median(rec["free_s"]), statistics.median(rec["confined_s"])
    return {"fraction": fraction, "free_s": free, "confined_s": confined,
            "ratio": confined / free, "repeats": repeats}


NOTES = textwrap.dedent("""\
    ### Notes

    - Goodput is TCP payload; tbf charges whole Ethernet frames, so a bulk transfer of full
      frames reaches at most 1448/1514 = 0.956 of the tc rate.  "goodput / expected" near 1.00
      means the shaper is exact; the figure the device's bandwidth estimate should land near is
      the goodput (application bytes), within the 15% the tests allow.
    - tbf burst = max(1600 B, rate/100): one full frame (the bucket must hold a frame) and at
      least one HZ=100 tick of traffic; larger buckets would let the first bytes of every
      request out at veth speed (at 0.05 Mbps a 16 KB bucket is 2.6 s of free link).
    - tbf queue (`latency`) = 2 s of traffic (at least 8 frames).  Measured while choosing
      it: at 1 Mbps, a 250 KB transfer (BBR, this kernel's default) dropped 184 packets with
      100 ms of queue, 44 with 512 ms, none with 2 s (goodput 0.999 of expected in all: SACK
      recovers); at 0.05 Mbps a queue holding the whole initial window (42 s) cost a spurious
      retransmission timeout and resend per transfer (goodput 0.916 of expected) against 0.974
      with 2 s.  One gRPC connection with one request in flight keeps the queue empty between
      requests, so its depth adds no latency the socket buffer would not add anyway.
    - netem (delay, loss) goes at the root with tbf as its child (parent 1:1): delay first,
      then the rate limit, as the Linux Foundation netem guide arranges "delay + rate".  This
      VM's kernel (6.18, CONFIG_NET_SCH_NETEM unset; only tbf, htb, fifo, ingress built in)
      has no netem: `ShapedLink(..., delay_ms>0 or loss_pct>0)` raises ShapingUnavailable
      there and the delay test skips; rate shaping needs only tbf.
    - The veth pair is created inside the device namespace with its peer moved straight into
      the cloud one, so the caller's namespace never gains a link; deleting the two
      namespaces (after stopping the processes left in them) removes everything.
    - CPU quota: cgroup v1 here (/sys/fs/cgroup/cpu, cpu.cfs_period_us 100000); 0.1 makes the
      vgg16_bn forward about 10x slower (10.0x, 10.4x, 10.5x in three runs), i.e. about a
      Raspberry Pi 4 (0.33 s on one core here vs 3.26 s on a Pi 4 per the guide).  The quota
      caps the whole process, all threads together.
""")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bench import common

    p = argparse.ArgumentParser(prog="python -m bench.netns", description=__doc__.split("\n")[0])
    p.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.5, 1.0, 2.0],
                   help="tbf rates to measure, Mbps")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each transfer")
    p.add_argument("--repeats", type=int, default=3, help="transfers per rate")
    p.add_argument("--quota", type=float, default=0.1, help="CPU fraction for the slowdown figure")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        require_net_admin()
    except LinkUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cleanup_stale()
    lines = common.header("Shaped links (network namespaces + tbf) and the CPU quota",
                          "python -m bench.netns " + " ".join(argv or sys.argv[1:]))
    lines += ["### TCP goodput over the shaped veth vs the tbf rate", "",
              f"Bulk transfer device -> cloud of ~{args.seconds:g} s, {args.repeats} per rate, "
              "receiver-side payload bytes from first to last byte. Expected goodput = rate x "
              f"{TCP_PAYLOAD_PER_FRAME}/{FRAME_BYTES} (TCP/IP/Ethernet headers of full frames).", "",
              "| tc rate Mbps | burst B | latency ms | goodput Mbps (median) | min..max | "
              "goodput / rate | goodput / expected |", "|---:|---:|---:|---:|---|---:|---:|"]
    for rate in args.rates:
        shape = TbfShape(rate)
        g = measure_goodput(rate, args.seconds, args.repeats)
        med = statistics.median(g)
        lines.append(f"| {rate:g} | {shape.burst_bytes} | {shape.latency_ms} | {med:.4f} | "
                     f"{min(g):.4f}..{max(g):.4f} | {med / rate:.3f} | "
                     f"{med / shape.expected_goodput_mbps:.3f} |")
        print(lines[-1], flush=True)
    q = measure_quota_slowdown(args.quota)
    lines += ["", f"### vgg16_bn forward under a CPU quota of {q['fraction']:g} CPU", "",
              "`planner.models.build_model('vgg16_bn', use_default_weights=False)`, input "
              f"1x3x224x224, torch.set_num_threads(1), median of {q['repeats']} after one warm-up; "
              "the same process first unconfined, then confined with "
              "`device.cpu_quota.confine_to_cpu_fraction`.", "",
              "| quota | forward s | ratio |", "|---|---:|---:|",
              f"| none | {q['free_s']:.3f} | 1 |",
              f"| {q['fraction']:g} | {q['confined_s']:.3f} | {q['ratio']:.2f} |"]
    lines += ["", NOTES]
    if args.no_write:
        print("\n".join(lines))
    else:
        common.write("netns", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
