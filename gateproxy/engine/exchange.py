"""`Exchange`: one request from its head to its last byte, and what its answer has done
so far (the model: uvicorn's `RequestResponseCycle`).

The client connection (gateproxy/engine/connection.py) makes one when a request begins
and fills it from llhttp's callbacks: target, header lines, then body bytes into a
`Chunks`. Trailer fields never reach it: llhttp reports them as header lines after the
head is complete, and the connection drops them there.
"""

from __future__ import annotations

from collections.abc import Callable

from multidict import CIMultiDict, CIMultiDictProxy

from gateproxy.engine.flow import NO_BODY, Chunks
from gateproxy.http_rules.actions import RequestHead


class Exchange:
    """A request and the progress of its answer."""

    __slots__ = ("_headers", "_pause", "_resume", "_tunnel", "answered", "body", "complete",
                 "ends",
                 "has_body", "head_done", "keep_alive", "method", "raw_headers", "refusal",
                 "started", "target", "trailers", "upgrade", "version")

    def __init__(self, started: float, pause: Callable[[], None],
                 resume: Callable[[], None]) -> None:
        self.started = started  # the loop's time of its first byte
        self.method = ""
        self.target = b""
        self.version = (1, 1)
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: CIMultiDictProxy[str] | None = None
        self.keep_alive = True  # what the client asked for (llhttp's reading)
        self.upgrade = False  # llhttp stopped after the head: an upgrade or a CONNECT
        self.head_done = False
        self.has_body = False
        self.complete = False  # the whole request has been read
        self.answered = False  # its answer has been written
        self.body = NO_BODY  # a Chunks of its own once its head announces a body
        self.trailers = 0  # trailer fields seen (and dropped)
        self.ends = False  # a trailer field ends the connection after this request
        self.refusal: str | None = None  # not a request: the 400 for bytes that did not parse
        self._pause = pause
        self._resume = resume
        self._tunnel: Chunks | None = None

    def expect_body(self) -> None:
        """Its head announced a body: it comes in a queue of its own."""
        self.body = Chunks(self._pause, self._resume)

    @property
    def tunnel(self) -> Chunks:
        """The bytes that come after an upgrade request's head, for the upstream once it
        has switched protocols."""
        if self._tunnel is None:
            self._tunnel = Chunks(self._pause, self._resume)
        return self._tunnel

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The header lines as text (each byte as its Latin-1 character: the planner
        refuses what is not UTF-8 before anything is forwarded)."""
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in self.raw_headers))
        return self._headers

    def head(self, peername: object, tls: bool) -> RequestHead:
        """What the planner reads."""
        # surrogateescape: a target byte that is not UTF-8 goes upstream as it came.
        return RequestHead(self.method, self.target.decode("utf-8", "surrogateescape"),
                           self.version,
                           self.headers, tuple(self.raw_headers), peername, tls)
