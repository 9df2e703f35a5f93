"""What the tests that start real servers (Samba, the RADOS Gateway, the registry) share."""

from __future__ import annotations

import os
import socket

import pytest


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(kind: str, missing: str) -> None:
    """Skips the calling test when `missing` names what this machine lacks for `kind`
    tests; fails it under CI, where a skip would hide a missing install step."""
    if missing:
        message = f"{kind} tests need: {missing}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must not skip {kind} tests: {message}")
        pytest.skip(message)
