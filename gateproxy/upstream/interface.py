"""What the proxy sees of the upstream client, and the one map from a failure to its
answer.

A view that asks the upstream itself (the health view) sees `UpstreamClient.fetch()` and
`UpstreamResponse`; the core's pool (gateproxy/engine/upstream.py) implements them. What
goes wrong talking to the upstream becomes an UpstreamError through `failure`, the one
map (the model: httpx's map of transport errors), so that a failure reads the same
wherever it is met. This module imports nothing of gateproxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Final, Protocol, TypeVar

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


class ConnectTimeout(TimeoutError):
    """The upstream did not accept a connection within `upstream.connect_timeout_ms`."""


class Disconnected(ConnectionError):
    """The upstream closed the connection before its answer was complete."""


class Malformed(Exception):
    """The upstream's answer is not HTTP/1.1 as llhttp reads it."""


class UpstreamResponse(Protocol):
    status: int
    reason: bytes

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]: ...

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as the upstream sends it; raises UpstreamError when it breaks."""
        ...

    def close(self) -> None:
        """Done with it: a body not read to its end drops its connection."""


class UpstreamClient(Protocol):
    async def fetch(self, method: str, target: str, fields: list[tuple[bytes, bytes]]
                    ) -> UpstreamResponse:
        """A request with these header lines (`Host` first, when there is one)."""
        ...

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


# --- the error map ------------------------------------------------------------------------

# What a client catches and hands to `failure` (anything else, cancellation included,
# goes on as it is).
FAILURES: Final = (TimeoutError, OSError, Malformed)

# Which failure is which answer, one row per kind; the first row whose type the exception
# is an instance of decides, so a subclass comes before its base. A message has two
# forms: before the answer's head (connecting, sending, waiting) and within its body.
# {ms}: the read timeout; {exc}: the exception's own text.
_MAP: Final[tuple[tuple[type[BaseException] | tuple[type[BaseException], ...],
                        str, str, str], ...]] = (
    (ConnectTimeout, UNAVAILABLE,
     "the upstream did not accept a connection in time",
     "the upstream did not accept a connection in time"),
    # The read timeout: no byte for `read_timeout_ms`.
    (TimeoutError, TIMEOUT,
     "no response from the upstream within {ms} ms",
     "the upstream stalled mid-response"),
    # An answer llhttp refused: its connection is closed, the client told at once.
    (Malformed, UNAVAILABLE,
     "the upstream sent {exc}",
     "the upstream sent {exc}"),
    # Refused, reset, DNS, TLS, closed without a (whole) answer.
    (OSError, UNAVAILABLE,
     "the upstream is unavailable: {exc}",
     "the upstream broke off: {exc}"),
)


def failure(exc: BaseException, read_timeout_ms: int, *,
            mid_body: bool = False) -> UpstreamError:
    """What `exc`, met talking to the upstream, means to the client: 502 or 504.
    `mid_body`: the answer's head had arrived. An exception no row names gets the last
    row's answer."""
    if isinstance(exc, UpstreamError):
        return exc
    _, code, before, within = next((row for row in _MAP if isinstance(exc, row[0])), _MAP[-1])
    return UpstreamError(code, (within if mid_body else before).format(
        ms=read_timeout_ms, exc=str(exc) or type(exc).__name__))
