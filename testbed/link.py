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
at veth speed, as the uplink is what the partition choice trades against.  The tc arguments
come from `testbed.tbf.TbfShape`.  Kernels without sch_netem (CONFIG_NET_SCH_NETEM unset)
raise `ShapingUnavailable` when delay or loss is asked for; rate alone needs only sch_tbf.

Safety: every loop is bounded in count and time; namespaces are removed in `__exit__`, on
SIGINT/SIGTERM (the handler tears down, restores the previous handler and hands the signal to
it) and at interpreter exit; `testbed.namespaces.cleanup_stale(prefix)` removes namespaces of
this naming scheme left by dead processes.  Addresses come from one project /30 and exist
only inside the two namespaces; nothing routes to or from the caller's network.
"""
from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import threading
from dataclasses import replace

from testbed.errors import CommandFailed, ShapingUnavailable
from testbed.namespaces import (DEFAULT_PREFIX, TERM_GRACE_S, delete_netns, netns_exec_prefix,
                                require_net_admin, run)
from testbed.processes import terminate_all
from testbed.tbf import TbfShape

log = logging.getLogger(__name__)

# The project's own /30: exactly two hosts, used only inside namespaces this module creates.
PROJECT_SUBNET = ipaddress.ip_network("10.213.7.0/30")
DEVICE_ADDR = str(PROJECT_SUBNET.network_address + 1)   # 10.213.7.1
CLOUD_ADDR = str(PROJECT_SUBNET.network_address + 2)    # 10.213.7.2
DEVICE_IF = "cf-dev"     # interface names exist only inside the namespaces
CLOUD_IF = "cf-cloud"
TBF_HANDLE = "10:"
NETEM_HANDLE = "1:"


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
                run(["ip", "netns", "add", ns])
                self._created.append(ns)
            run(["ip", "-n", self.device_ns, "link", "add", DEVICE_IF, "type", "veth",
                 "peer", "name", CLOUD_IF, "netns", self.cloud_ns])
            plen = PROJECT_SUBNET.prefixlen
            for ns, ifname, addr in ((self.device_ns, DEVICE_IF, DEVICE_ADDR),
                                     (self.cloud_ns, CLOUD_IF, CLOUD_ADDR)):
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
                run(["ip", "-n", ns, "addr", "add", f"{addr}/{plen}", "dev", ifname])
                run(["ip", "-n", ns, "link", "set", ifname, "up"])
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
            terminate_all(self._procs, TERM_GRACE_S)
            for ns in reversed(self._created):
                delete_netns(ns)
            self._created.clear()
        finally:
            self._restore_handlers()
            atexit.unregister(self.close)

    # --- shaping -----------------------------------------------------------------------------
    def _tc(self, *args: str) -> subprocess.CompletedProcess:
        return run(["tc", "-n", self.device_ns, "qdisc", *args])

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
        out = run(["tc", "-n", self.device_ns, "-s", "-j", "qdisc", "show", "dev", DEVICE_IF]).stdout
        for q in json.loads(out):
            if q.get("kind") == "tbf":
                return {k: int(q.get(k, 0)) for k in
                        ("bytes", "packets", "drops", "overlimits", "backlog", "qlen")}
        raise CommandFailed(f"no tbf qdisc on {DEVICE_IF} in {self.device_ns}")

    # --- processes -----------------------------------------------------------------------------
    def exec_prefix(self, ns: str) -> list[str]:
        """argv prefix that runs a command in `ns`'s network (see `netns_exec_prefix`)."""
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
