"""What the proxy sees of an upstream client, and the one map from a failure to its answer.

The proxy only sees `UpstreamClient.send()` and `UpstreamResponse`. Two clients implement
them: AiohttpUpstream (gateproxy/upstream/aiohttp_client.py, aiohttp's ClientSession) and
FastUpstream (gateproxy/aio/client.py, behind the fence). Both turn what goes wrong into an
UpstreamError through `failure`, so a failure reads the same whichever client is in use.

The fence (gateproxy/aio/) may import this module: it imports nothing of gateproxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Final, Literal, Protocol, TypeVar, runtime_checkable

import aiohttp
from multidict import CIMultiDict

RawHeaders = tuple[tuple[bytes, bytes], ...]
T = TypeVar("T")

# The codes of an UpstreamError (gateproxy/core/answers.py gives their statuses).
UNAVAILABLE: Final = "upstream_unavailable"  # 502
TIMEOUT: Final = "upstream_timeout"  # 504


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # UNAVAILABLE or TIMEOUT
        self.message = message


class HandshakeRefused(Exception):
    """The upstream answered a WebSocket handshake with something other than 101."""

    def __init__(self, status: int, reason: str, headers: RawHeaders) -> None:
        super().__init__(f"the upstream refused the WebSocket handshake with {status}")
        self.status = status
        self.reason = reason
        self.raw_headers = headers


UpstreamWebSocket = aiohttp.ClientWebSocketResponse[Literal[False]]


class UpstreamResponse(Protocol):
    status: int
    reason: str
    raw_headers: RawHeaders

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as the upstream sends it; raises UpstreamError when it breaks."""
        ...

    def release(self) -> None:
        """Done with a fully read body: the connection may be reused."""

    def close(self) -> None:
        """Abandon the body: the connection is dropped."""


class UpstreamClient(Protocol):
    async def send(self, method: str, target: str, headers: CIMultiDict[str],
                   body: aiohttp.StreamReader | None) -> UpstreamResponse: ...

    async def close(self) -> None: ...


# True in a task whose upstream requests report the upstream's state instead of riding
# out its restart (`health_path`): the connect step makes one attempt and never waits.
NO_WAIT: Final = ContextVar("upstream_no_wait", default=False)


class ConnectStep(Protocol):
    """How a client makes a new upstream connection: through `connect`, which tries
    again while the upstream restarts (gateproxy/upstream/reconnect.py)."""

    async def connect(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`'s connection; raises what it raises, or UpstreamError."""
        ...


@runtime_checkable
class WebSocketUpstream(Protocol):
    """An upstream client that can also open WebSockets (a separate interface, so that
    wrappers of UpstreamClient need not implement it)."""

    async def open_websocket(self, target: str, headers: CIMultiDict[str],
                             protocols: tuple[str, ...], compress: bool,
                             max_msg_size: int) -> UpstreamWebSocket:
        """Open a WebSocket upstream; raises HandshakeRefused or UpstreamError."""
        ...

    async def close(self) -> None: ...


# --- the error map ------------------------------------------------------------------------

# What a client catches and hands to `failure` (anything else, cancellation included,
# goes on as it is).
FAILURES: Final = (TimeoutError, aiohttp.ClientError, OSError)

# Which failure is which answer, one row per kind; the first row whose type the exception
# is an instance of decides, so a subclass comes before its base. A message has two
# forms: before the answer's head (connecting, sending, waiting) and within its body.
# {ms}: the read timeout; {exc}: the exception's own text.
_MAP: Final[tuple[tuple[type[BaseException] | tuple[type[BaseException], ...],
                        str, str, str], ...]] = (
    # aiohttp's sock_connect ran out (FastUpstream raises the same for its connect timeout).
    (aiohttp.ConnectionTimeoutError, UNAVAILABLE,
     "the upstream did not accept a connection in time",
     "the upstream did not accept a connection in time"),
    # The read timeout: aiohttp's ServerTimeoutError and SocketTimeoutError, asyncio's.
    (TimeoutError, TIMEOUT,
     "no response from the upstream within {ms} ms",
     "the upstream stalled mid-response"),
    # Refused, reset, DNS, TLS (an OSError, or aiohttp's ClientConnectorError family
    # around one), closed without an answer (ServerDisconnectedError, ClientOSError), a
    # body cut short (ClientPayloadError), a head aiohttp could not parse
    # (ClientResponseError), any other aiohttp client error.
    ((aiohttp.ClientError, OSError), UNAVAILABLE,
     "the upstream is unavailable: {exc}",
     "the upstream broke off: {exc}"),
)


def failure(exc: BaseException, read_timeout_ms: int, *,
            mid_body: bool = False) -> UpstreamError:
    """What `exc`, met talking to the upstream, means to the client: 502 or 504.
    `mid_body`: the answer's head had arrived. An exception no row names (e.g. the
    HttpProcessingError FastUpstream meets raw when an answer is not HTTP, which aiohttp's
    ClientSession wraps in a ClientResponseError) gets the last row's answer."""
    _, code, before, within = next((row for row in _MAP if isinstance(exc, row[0])), _MAP[-1])
    return UpstreamError(code, (within if mid_body else before).format(
        ms=read_timeout_ms, exc=exc))
