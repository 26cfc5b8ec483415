"""The upstream's reachability as the proxy's own connections find it, and when a request
that met it down may try to connect again (pure: the time comes in as arguments).

A refused (or reset) connection turns the upstream `down`; the first connection that
succeeds turns it `up` again. While it is down, connection attempts follow one schedule
for the whole process, 25 ms doubling to 400 ms (`retry_cap_ms`), so that the requests
waiting for it make one attempt at a time between them; each request waits no longer than
its own deadline (`upstream.retry_connect_ms`). gateproxy/upstream/reconnect.py does the
waiting.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, Final, NamedTuple

from gateproxy.core.backoff import retry_delay_ms

UP: Final = "up"
DOWN: Final = "down"
FIRST_RETRY_MS: Final = 25
MAX_RETRY_MS: Final = 400
RESTARTS_WINDOW_S: Final = 3600.0
# The backoff has no jitter: one process's attempts need no spreading, and the shared
# function wants a generator all the same.
_NO_JITTER: Final = random.Random(0)


def retry_cap_ms(retry_connect_ms: int) -> int:
    """The backoff's cap for requests that wait `retry_connect_ms`: 400 ms, or half their
    time when that is shorter, so that every waiting request sees at least one attempt
    (a request gives up when the next attempt would come after its deadline)."""
    return min(MAX_RETRY_MS, retry_connect_ms // 2)


class Recovery(NamedTuple):
    """The upstream is up again after `down_for_s`."""

    down_for_s: float


class UpstreamState:
    """`up` or `down`, since when (wall time), the last connection error, the times it
    went down in the last hour (its restarts, as seen from here), and while down the
    moment the next connection attempt may start (monotonic time)."""

    def __init__(self, wall: float, max_retry_ms: int = MAX_RETRY_MS) -> None:
        """`max_retry_ms`: the backoff's cap (`retry_cap_ms`)."""
        self._max_retry_ms = max_retry_ms
        self.state = UP
        self.since = wall
        self.last_error: tuple[str, str] | None = None  # (code, message)
        self.failures = 0  # failed attempts since it went down: the backoff's step
        self.next_attempt_at = 0.0
        self._down_at = 0.0
        self._downs: deque[float] = deque()

    @property
    def up(self) -> bool:
        return self.state == UP

    def failed(self, now: float, wall: float, code: str, message: str) -> bool:
        """A connection attempt failed at monotonic `now`; True when the upstream has just
        gone down. The next attempt waits for the backoff."""
        self.last_error = (code, message)
        self.failures += 1
        self.next_attempt_at = now + retry_delay_ms(
            self.failures, FIRST_RETRY_MS, self._max_retry_ms, 0, _NO_JITTER) / 1000
        if self.state == DOWN:
            return False
        self.state = DOWN
        self.since = wall
        self._down_at = now
        self._downs.append(wall)
        return True

    def succeeded(self, now: float, wall: float) -> Recovery | None:
        """A connection was made; the Recovery when the upstream was down."""
        if self.state == UP:
            return None
        self.state = UP
        self.since = wall
        self.failures = 0
        self.next_attempt_at = 0.0
        return Recovery(now - self._down_at)

    def snapshot(self, wall: float) -> dict[str, Any]:
        """The status page's row (`since`: wall-clock seconds)."""
        error = self.last_error
        return {"status": self.state, "since": self.since,
                "lastError": None if error is None else {"code": error[0], "message": error[1]},
                "restartsLastHour": self.restarts(wall)}

    def restarts(self, wall: float) -> int:
        """How many times it went down in the last hour."""
        downs = self._downs
        while downs and downs[0] <= wall - RESTARTS_WINDOW_S:
            downs.popleft()
        return len(downs)


class Patience:
    """One request's retry decision: from `started` (monotonic), it may wait `budget_s`
    for the upstream."""

    __slots__ = ("deadline",)

    def __init__(self, started: float, budget_s: float) -> None:
        self.deadline = started + budget_s

    def wait_s(self, now: float, next_attempt_at: float) -> float | None:
        """How long to wait before the next attempt (0: now); None when the time is
        spent. An attempt the schedule puts past the deadline is not waited for."""
        if now >= self.deadline or next_attempt_at >= self.deadline:
            return None
        return max(0.0, next_attempt_at - now)

    def left_s(self, now: float) -> float:
        return max(0.0, self.deadline - now)
