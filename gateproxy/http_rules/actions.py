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

from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from gateproxy.core.answers import Answer
from gateproxy.upstream.interface import RawHeaders

__all__ = ["Action", "Answer", "Endpoint", "EndpointHandler", "ForwardPlan", "Gated", "Hold",
           "LocalRequest", "Reply", "RequestHead", "Upgrade", "Waitable"]


class RequestHead(NamedTuple):
    """A parsed request head, as the planner reads it."""

    method: str
    target: str  # as received
    version: tuple[int, int]
    headers: CIMultiDictProxy[str]
    raw_headers: RawHeaders
    peername: object  # the connection's peer name, as its transport gives it
    tls: bool


class ForwardPlan(NamedTuple):
    """Send the request upstream to `target` with `headers`; `close`: end the client
    connection after the answer; `expect`: tell the client `100 Continue` first."""

    target: str
    headers: CIMultiDict[str]
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
    """Send the WebSocket handshake upstream to `target` with `headers`; after its 101,
    relay bytes both ways."""

    target: str
    headers: CIMultiDict[str]


class Reply(NamedTuple):
    """How a forwarded request's answer goes to the client: its header lines in order
    (framing, `Date` and `Connection` included), whether its body is written at all,
    chunked anew, and whether the client connection ends after it."""

    headers: list[tuple[str, str]]
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


# Named tuples, not dataclasses: the core makes a head and an action for every
# request, and a tuple is made three times faster than a frozen dataclass.
Action = Answer | Gated | ForwardPlan | Endpoint | Hold | Upgrade
