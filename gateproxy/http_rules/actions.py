"""What the two mechanics carry out, and the narrow interfaces they do it through.

A request's head comes in (`RequestHead`); the planner (gateproxy/http_rules/plan.py)
says what to do with it, as one `Action`: an `Answer` of the proxy's own, the gate's
503 (`Gated`), a `ForwardPlan` (the target and the headers to send), an `Endpoint` a view answers, a
`Hold` (wait for a dependency, then plan again) or an `Upgrade` (a WebSocket relay).
aiohttp's usual path (gateproxy/serve/handler.py) and the fenced fast path
(gateproxy/aio/fastpath.py) only carry these out; neither decides anything.

This is the one module of gateproxy outside gateproxy/aio/ that the fence imports: it
holds only protocols and plain types, and names again those of the upstream interface
and of the answers that the fence uses, so that the fence needs nothing else.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from gateproxy.core.answers import SERVER, Answer, error, error_bytes, render
from gateproxy.upstream.interface import (
    FAILURES,
    UNAVAILABLE,
    ConnectStep,
    RawHeaders,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamWebSocket,
    WebSocketUpstream,
    failure,
)

__all__ = ["FAILURES", "SERVER", "UNAVAILABLE", "Action", "Answer", "ConnectStep", "Endpoint",
           "FastPolicy",
           "ForwardPlan", "Gated", "Hold", "RawHeaders", "RequestHead", "Upgrade",
           "UpstreamClient", "UpstreamError", "UpstreamResponse", "UpstreamWebSocket",
           "Waitable", "WebSocketUpstream", "error", "error_bytes", "failure", "render"]


class RequestHead(NamedTuple):
    """A parsed request head, as both mechanics have it."""

    method: str
    target: str  # as received
    version: tuple[int, int]
    headers: CIMultiDictProxy[str]
    raw_headers: RawHeaders
    peername: object  # the connection's peer name, as its transport gives it
    tls: bool


class ForwardPlan(NamedTuple):
    """Send the request upstream to `target` with `headers`; `close`: end the client
    connection after the answer."""

    target: str
    headers: CIMultiDict[str]
    close: bool = False


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
    """Relay a WebSocket session with the upstream's `target`, its handshake sent with
    `headers` (aiohttp's client adds the handshake's own)."""

    target: str
    headers: CIMultiDict[str]


# Named tuples, not dataclasses: the fast path makes a head and an action for every
# request, and a tuple is made three times faster than a frozen dataclass.
Action = Answer | Gated | ForwardPlan | Endpoint | Hold | Upgrade


class FastPolicy(Protocol):
    """What the fast path asks of the proxy: the plan for a request, the headers of a
    relayed answer, and what it counts."""

    def plan(self, head: RequestHead) -> Action: ...

    def response_headers(self, raw: RawHeaders) -> CIMultiDict[str]: ...

    def forwarded(self, method: str, status: int, target: str) -> None:
        """A forwarded request's answer had `status`."""

    def latency(self, seconds: float) -> None:
        """The time from sending a request upstream to its response's headers."""
