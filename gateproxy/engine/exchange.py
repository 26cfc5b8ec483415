"""`Exchange`: one request from its head to its last byte, and what its answer has done
so far (the model: uvicorn's `RequestResponseCycle`).

The client connection (gateproxy/engine/connection.py) makes one when a request begins
and fills it from llhttp's callbacks: target, header lines, then body bytes into a
`Chunks`. Trailer fields never reach it: llhttp reports them as header lines after the
head is complete, and the connection drops them there.
"""

from __future__ import annotations

from collections.abc import Callable

from gateproxy.engine.flow import NO_BODY, Chunks
from gateproxy.http_rules.actions import RequestHead


class Exchange:
    """A request and the progress of its answer."""

    __slots__ = ("answered", "body", "complete", "ends", "has_body", "head_done",
                 "method", "names", "raw_headers", "refusal", "started", "stop", "target",
                 "tunnel", "upgrade", "version")

    def __init__(self, started: float) -> None:
        self.started = started  # the loop's time of its first byte
        self.method = ""
        self.target = b""
        self.version = (1, 1)
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.names: list[bytes] = []  # the header names in lower case, in order
        self.upgrade = False  # llhttp stopped after the head: an upgrade or a CONNECT
        self.head_done = False
        self.has_body = False
        self.complete = False  # the whole request has been read
        self.answered = False  # its answer has been written
        self.body = NO_BODY  # a Chunks of its own once its head announces a body
        self.ends = False  # a trailer field ends the connection after this request
        self.refusal: str | None = None  # not a request: the 400 for bytes that did not parse
        # While its carrying-out waits on something (an upstream, a hold): what gives it
        # up when the client goes away.
        self.stop: Callable[[], object] | None = None
        # An upgrade's: the bytes after its head, for the upstream once it has switched.
        self.tunnel: Chunks | None = None

    def expect_body(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Its head announced a body: it comes in a queue of its own, which holds the
        client back (`pause`, `resume`) while it is full."""
        self.body = Chunks(pause, resume)

    def head(self, peername: object, tls: bool) -> RequestHead:
        """What the planner reads."""
        # surrogateescape: a target byte that is not UTF-8 goes upstream as it came.
        return RequestHead(self.method, self.target.decode("utf-8", "surrogateescape"),
                           self.version, self.raw_headers, self.names, peername, tls)
