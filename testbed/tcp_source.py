"""Sending end of a bulk TCP transfer: `python -m testbed.tcp_source HOST PORT NBYTES DEADLINE_S`.

Connects to HOST:PORT (retrying for up to CONNECT_TRIES x 50 ms while the sink starts), sends
NBYTES zero bytes or as many as fit before the deadline, then shuts the connection down.
Started in the device namespace by `testbed.goodput.measure_transfer`.
"""
from __future__ import annotations

import socket
import sys
import time

CHUNK_BYTES = 8192
CONNECT_TRIES = 50
CONNECT_RETRY_S = 0.05


def send(host: str, port: int, nbytes: int, deadline_s: float) -> int:
    """Bytes sent (nbytes unless the deadline came first)."""
    end = time.monotonic() + deadline_s
    for _ in range(CONNECT_TRIES):
        try:
            s = socket.create_connection((host, port), timeout=deadline_s)
            break
        except OSError:
            time.sleep(CONNECT_RETRY_S)
    else:
        raise ConnectionError(f"could not connect to {host}:{port}")
    chunk = bytes(CHUNK_BYTES)
    sent = 0
    with s:
        while sent < nbytes and time.monotonic() < end:
            sent += s.send(chunk[: min(len(chunk), nbytes - sent)])
        s.shutdown(socket.SHUT_WR)
    return sent


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        print("usage: python -m testbed.tcp_source HOST PORT NBYTES DEADLINE_S", file=sys.stderr)
        return 2
    try:
        send(args[0], int(args[1]), int(args[2]), float(args[3]))
    except ConnectionError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
