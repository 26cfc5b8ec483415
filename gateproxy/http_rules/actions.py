"""What the HTTP core carries out, as plain values: the planner's (gateproxy/http_rules/
plan.py) actions for a request, and its reply to an upstream answer.

A request's head comes in (`RequestHead`); the planner says what to do with it, as one
`Action`: an `Answer` of the proxy's own, the gate's 503 (`Gated`), a `ForwardPlan` (the
target and the headers to send), an `Endpoint` a view answers, a `Hold` (wait for a
dependency, then plan again) or an `Upgrade` (a relay of bytes once the upstream has
switched protocols). For a forwarded request's answer it gives a `Reply`: the header
lines to write and how the body is framed. The core (gateproxy/engine/) only carries
these out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from gateproxy.core.answers import Answer

Field = tuple[bytes, bytes]

__all__ = ["Action", "Answer", "Endpoint", "EndpointHandler", "Field", "ForwardPlan", "Gated",
           "Hold", "LocalRequest", "Reply", "RequestHead", "Upgrade", "Waitable"]


class RequestHead:
    """A parsed request head, as the planner reads it: the header lines as llhttp gave
    them, with their names in lower case beside them (`names`), for lookups."""

    __slots__ = ("_headers", "method", "names", "peername", "raw_headers", "target", "tls",
                 "version")

    def __init__(self, method: str, target: str, version: tuple[int, int],
                 raw_headers: Sequence[Field], names: Sequence[bytes], peername: object,
                 tls: bool) -> None:
        self.method = method
        self.target = target  # as received
        self.version = version
        self.raw_headers = raw_headers
        self.names = names
        self.peername = peername  # the connection's peer name, as its transport gives it
        self.tls = tls
        self._headers: CIMultiDictProxy[str] | None = None

    def __contains__(self, name: object) -> bool:
        """Whether a header of this name (any case) came."""
        return isinstance(name, str) and name.lower().encode("latin-1") in self.names

    def field(self, name: bytes) -> bytes | None:
        """The first value of the header `name` (in lower case), or None."""
        names = self.names
        return self.raw_headers[names.index(name)][1] if name in names else None

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The header lines as text (each byte as its Latin-1 character), for the
        proxy's own endpoints."""
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in self.raw_headers))
        return self._headers


class ForwardPlan(NamedTuple):
    """Send the request upstream to `target` with these header lines (`Host` first when
    there is one); `close`: end the client connection after the answer; `expect`: tell
    the client `100 Continue` first."""

    target: str
    fields: list[Field]
    close: bool = False
    expect: bool = False


class Gated(NamedTuple):
    """The gate's 503: `answer` is written, never forwarded (and counted as gated)."""

    answer: Answer


class Endpoint(NamedTuple):
    """The proxy's own endpoint `name` answers (health, or an admin endpoint); `close`:
    end the client connection after the answer."""

    name: str
    close: bool = False


class Waitable(Protocol):
    """What a `Hold` waits on: a dependency's watch (gateproxy/core/watch.py)."""

    async def wait_change(self, timeout_s: float) -> None: ...

    async def hold(self, timeout_s: float, limit: int) -> bool: ...


class Hold(NamedTuple):
    """Wait, then plan again with `waited=True`: for the next change of `watch` (a first
    probe), or with `hold`, for `dependency` to come back (at most `limit` waiting)."""

    watch: Waitable
    timeout_s: float
    hold: bool
    limit: int
    dependency: str


class Upgrade(NamedTuple):
    """Send the WebSocket handshake upstream to `target` with these header lines; after
    its 101, relay bytes both ways."""

    target: str
    fields: list[Field]


class Reply(NamedTuple):
    """How a forwarded request's answer goes to the client: its header lines in order
    (framing, `Date` and `Connection` included), whether its body is written at all,
    chunked anew, and whether the client connection ends after it."""

    headers: list[Field]
    body: bool
    chunked: bool
    close: bool


class LocalRequest(NamedTuple):
    """What an endpoint of the proxy's own reads of its request."""

    method: str
    path: str  # the target, query included
    headers: CIMultiDictProxy[str]
    peer: str | None  # the caller's address, as the connection says


EndpointHandler = Callable[[LocalRequest], Awaitable[Answer]]


# Named tuples, not dataclasses: the core makes an action for every request, and a
# tuple is made three times faster than a frozen dataclass.
Action = Answer | Gated | ForwardPlan | Endpoint | Hold | Upgrade
