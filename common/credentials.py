"""Credential files both daemons read: PEM certificates and keys, and the bearer token."""
from __future__ import annotations

import ipaddress
import logging
import stat
from pathlib import Path

log = logging.getLogger(__name__)


class SecurityConfigError(ValueError):
    """A token or certificate file that cannot be used."""


def read_token(path: str | Path) -> str:
    """One bearer token: the file's only line, surrounding whitespace removed.

    Warns, as ssh does for keys, when group or others may read the file."""
    try:
        text = Path(path).read_text()
        mode = Path(path).stat().st_mode
    except OSError as e:
        raise SecurityConfigError(f"token file {str(path)!r}: {e.strerror}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is accessible by group or others (mode %s); "
                    "anyone who can read it can call the cloud: chmod 600 it",
                    path, stat.filemode(mode))
    token = text.strip()
    if not token or any(c.isspace() for c in token):
        raise SecurityConfigError(f"token file {str(path)!r}: expected one token without spaces")
    return token


def read_pem(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SecurityConfigError(f"{what} {str(path)!r}: {e.strerror}") from e
    if b"-----BEGIN" not in data:
        raise SecurityConfigError(f"{what} {str(path)!r}: expected a PEM file")
    return data


def is_loopback(host: str) -> bool:
    """True for a host name or address that never leaves this machine."""
    if host in ("localhost", ""):
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)       # ::ffff:127.0.0.1
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def split_host_port(target: str) -> tuple[str, int] | None:
    """`HOST:PORT` or `[V6]:PORT` (optionally `dns:///` or `ipv4:`/`ipv6:` prefixed) ->
    (host, port); None for targets that are not one TCP address (unix sockets, lists)."""
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(prefix):
            target = target[len(prefix):]
            break
    if "," in target or target.startswith("unix:") or ":" not in target:
        return None
    host, _, port = target.rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]"), int(port)
