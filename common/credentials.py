"""Credential files both daemons read: PEM certificates and keys, and the bearer token."""
from __future__ import annotations

from pathlib import Path


class SecurityConfigError(ValueError):
    """A token or certificate file that cannot be used."""


def read_token(path: str | Path) -> str:
    """One bearer token: the file's only line, surrounding whitespace removed."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SecurityConfigError(f"token file {str(path)!r}: {e.strerror}") from e
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
