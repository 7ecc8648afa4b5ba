"""Receiving end of a bulk TCP transfer: `python -m testbed.tcp_sink HOST PORT DEADLINE_S`.

Listens on HOST:PORT, prints `ready`, accepts one connection and reads until EOF or the
deadline; then prints one JSON line {"marks": [[monotonic_s, cumulative_bytes], ...],
"eof": bool} (eof: the sender closed before the deadline).  Started in the cloud namespace
by `testbed.goodput.measure_transfer`.
"""
from __future__ import annotations

import json
import socket
import sys
import time

RECV_BYTES = 65536


def receive(host: str, port: int, deadline_s: float) -> dict:
    end = time.monotonic() + deadline_s
    with socket.create_server((host, port)) as srv:
        srv.settimeout(deadline_s)
        print("ready", flush=True)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(max(0.1, end - time.monotonic()))
            marks, total = [], 0
            while time.monotonic() < end:
                try:
                    data = conn.recv(RECV_BYTES)
                except socket.timeout:
                    break
                if not data:
                    break
                total += len(data)
                marks.append((time.monotonic(), total))
    return {"marks": marks, "eof": time.monotonic() < end}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m testbed.tcp_sink HOST PORT DEADLINE_S", file=sys.stderr)
        return 2
    host, port, deadline_s = args[0], int(args[1]), float(args[2])
    print(json.dumps(receive(host, port, deadline_s)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
