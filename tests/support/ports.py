"""Loopback ports for servers a test starts later, or for 'connection refused'."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

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


@contextlib.contextmanager
def unaccepting(port: int = 0) -> Iterator[tuple[int, set[int]]]:
    """A loopback port (`port`, or any) whose listener's accept queue is full: the kernel
    drops every further handshake, so a connection to it hangs until its connect timeout.
    Yields the port and the local ports of the connections that fill the queue."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port, {filler.getsockname()[1] for filler in fillers}
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
