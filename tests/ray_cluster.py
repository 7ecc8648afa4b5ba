"""A real Ray cluster of several nodes on this machine, for tests and benches.

`ray start --head` and `ray start --address` as separate processes, each node with its own
ports (picked free) and custom resources, under one short temporary directory. Nothing
global is touched: the processes are found by that directory and the cluster's address in
their command lines (and their children), and only those are stopped, never `ray stop`,
which would end every Ray process of the user.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# a ~/.ray/auth_token makes `ray start` require token auth (Ray 2.60); our clusters run without
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
NODE_PORTS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
HEAD_PORTS = ("--port", "--ray-client-server-port", "--dashboard-port")
OBJECT_STORE_BYTES = 100 * 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children_by_parent() -> dict[int, list[int]]:
    """pid -> its child pids, every process (from /proc)."""
    out: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class LocalRayCluster:
    """Nodes started with `ray start` on 127.0.0.1; `address` is the head's GCS address."""

    def __init__(self):
        # short: Ray's unix sockets live below it (107-byte path limit)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
        self.env = dict(os.environ, **RAY_ENV)
        self.address = ""
        self.node_manager_ports: list[int] = []

    def _start(self, args: list[str], resources: dict[str, float], num_cpus: int) -> int:
        ports = {flag: free_port() for flag in NODE_PORTS}
        argv = [RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
                "--resources", json.dumps(resources), "--object-store-memory", str(OBJECT_STORE_BYTES),
                "--disable-usage-stats", *(str(v) for kv in ports.items() for v in kv)]
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed: {out.stderr.strip()[-800:]}")
        self.node_manager_ports.append(ports["--node-manager-port"])
        return ports["--node-manager-port"]

    def start_head(self, resources: dict[str, float], num_cpus: int = 1) -> str:
        ports = {flag: free_port() for flag in HEAD_PORTS}
        self._start(["--head", "--temp-dir", str(self.temp_dir), "--include-dashboard", "false",
                     *(str(v) for kv in ports.items() for v in kv)], resources, num_cpus)
        self.address = f"127.0.0.1:{ports['--port']}"
        return self.address

    def add_node(self, resources: dict[str, float], num_cpus: int = 1) -> int:
        """Start another node joined to the head; returns its node manager port (its id here)."""
        return self._start(["--address", self.address], resources, num_cpus)

    def raylet_pid(self, node_manager_port: int) -> int:
        """The raylet of the node started with `node_manager_port`."""
        for pid in self._roots():
            line = _cmdline(pid)
            if "raylet/raylet " in line and f"--node_manager_port={node_manager_port} " in line:
                return pid
        raise RuntimeError(f"no raylet with node manager port {node_manager_port}")

    def _roots(self) -> list[int]:
        """Processes whose command line names this cluster's directory or address."""
        port = self.address.rsplit(":", 1)[-1] if self.address else None
        # the client server names the cluster by the head's address, under the machine's own IP
        joined = re.compile(rf"address=\S*:{port}(\s|$)") if port else None
        out = []
        for p in Path("/proc").glob("[0-9]*"):
            line = _cmdline(int(p.name))
            if p.name != str(os.getpid()) and (str(self.temp_dir) in line or (joined and joined.search(line))):
                out.append(int(p.name))
        return out

    def pids(self) -> set[int]:
        """Every live process of this cluster: the roots and everything below them."""
        children, found = children_by_parent(), set()
        todo = self._roots()
        while todo:
            pid = todo.pop()
            if pid not in found and _alive(pid):
                found.add(pid)
                todo += children.get(pid, [])
        return found

    def stop(self, grace_s: float = 5.0) -> set[int]:
        """SIGTERM every process of the cluster, SIGKILL what is left after `grace_s`; returns
        the pids still alive after that (none, normally)."""
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.1)
            pids = {p for p in pids | self.pids() if _alive(p)}
            if not pids:
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return pids
