"""Network namespaces by name: create-permission check, listing, entering, stale clean-up.

Namespaces of this package are named PREFIX-PID-TOKEN-SIDE (SIDE `dev` or `cloud`), PID the
creating process, so `cleanup_stale(prefix)` can remove those whose creator is gone.  Every
`ip`/`tc` command is bounded in time (CMD_TIMEOUT_S) and every wait for a process to stop is
bounded too (TERM_GRACE_S, then SIGKILL).
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from testbed.errors import CommandFailed, NetAdminUnavailable

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "coinfer"
CMD_TIMEOUT_S = 10.0              # any single ip/tc command
TERM_GRACE_S = 3.0                # SIGTERM -> SIGKILL for processes left in a namespace
CAP_NET_ADMIN = 12                # bit in /proc/self/status CapEff

NS_RE = r"^{prefix}-(?P<pid>\d+)-(?P<token>[0-9a-f]+)-(?P<side>dev|cloud)$"


def run(argv: list[str], check: bool = True, timeout_s: float = CMD_TIMEOUT_S
        ) -> subprocess.CompletedProcess:
    """Run an `ip`/`tc` command; CommandFailed (with its stderr) when `check` and it fails."""
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
                return bool(int(line.split()[1], 16) & (1 << CAP_NET_ADMIN))
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
    proc = run(["ip", "netns", "add", probe], check=False)
    if proc.returncode != 0:
        raise NetAdminUnavailable(f"`ip netns add` failed: {proc.stderr.strip()}")
    run(["ip", "netns", "delete", probe], check=False)


def list_netns() -> list[str]:
    """Names of every network namespace `ip netns` knows."""
    proc = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def netns_exec_prefix(ns: str) -> list[str]:
    """argv prefix entering only the network namespace `ns` (keeps /sys/fs/cgroup visible).

    `nsenter --net` switches only the network namespace; `ip netns exec` would also remount
    /sys and hide /sys/fs/cgroup, which the device's --cpu-quota needs.
    """
    return ["nsenter", f"--net=/run/netns/{ns}", "--"]


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
        pids = [int(p) for p in run(["ip", "netns", "pids", ns], check=False).stdout.split()
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


def delete_netns(ns: str) -> None:
    """Stop the processes left in `ns`, then delete it; a failure is logged, not raised."""
    _kill_netns_pids(ns)
    proc = run(["ip", "netns", "delete", ns], check=False)
    if proc.returncode != 0 and ns in list_netns():
        log.warning("could not delete namespace %s: %s", ns, proc.stderr.strip())


def cleanup_stale(prefix: str = DEFAULT_PREFIX, include_live: bool = False) -> list[str]:
    """Delete namespaces named by this package with `prefix` whose creating process is gone.

    `include_live=True` also removes those of running processes (only for a manual clean-up:
    another benchmark may be using them).  Returns the names removed.
    """
    pattern = re.compile(NS_RE.format(prefix=re.escape(prefix)))
    removed = []
    for ns in list_netns():
        m = pattern.match(ns)
        if m is None:
            continue
        pid = int(m["pid"])
        if include_live or (pid != os.getpid() and not _pid_alive(pid)):
            delete_netns(ns)
            removed.append(ns)
    if removed:
        log.info("removed stale namespaces: %s", ", ".join(removed))
    return removed
