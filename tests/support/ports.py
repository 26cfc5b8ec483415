"""Loopback ports for servers a test starts later, or for 'connection refused'."""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on (bound and released), for 'connection refused' or for a
    server to start on later. Never the same one twice in a test run: two calls in a row
    may otherwise get the same port back, and two servers would then want it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
