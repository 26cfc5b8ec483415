"""Connecting to the upstream while it restarts: `Reconnector`, the connect step of the
upstream client (the HTTP core's pool, gateproxy/engine/upstream.py).

A refused (or reset) connection turns the upstream down (gateproxy/core/upstream_state.py).
The request that met it then waits, as do the requests that come while it is down, at
most `upstream.retry_max_requests` of them, each for at most `upstream.retry_connect_ms`;
between them they make one connection attempt at a time, on the state's backoff, and the
first that succeeds wakes them all. Nothing of a request has been sent before its
connection exists, so trying again is safe for every method. A request that gives up gets
the usual 502 `upstream_unavailable`; so do the waiting ones when the proxy shuts down.
While it is down and no request waits, a bare TCP connection is tried about once a second,
so that its return is seen without traffic too (its state, metric and alert).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from yarl import URL

from gateproxy.core.upstream_state import Patience, UpstreamState, retry_cap_ms
from gateproxy.logs import log
from gateproxy.monitor.probe import classify
from gateproxy.upstream.interface import NO_WAIT, UNAVAILABLE, UpstreamError, failure

T = TypeVar("T")

# The failures that prove the upstream is not listening (probe errorCodes): nothing was
# sent, and the server is most likely restarting.
RETRYABLE: Final = frozenset({"connection_refused", "connection_reset"})
# How the wait of a request that met the upstream down ended
# (`gateproxy_upstream_retries_total{outcome}`).
FORWARDED, TIMED_OUT, CANCELLED, REJECTED = "forwarded", "timed_out", "cancelled", "rejected"
OUTCOMES: Final = (FORWARDED, TIMED_OUT, CANCELLED, REJECTED)
IDLE_CHECK_S: Final = 1.0  # between bare connection attempts while down and idle


class Reconnector:
    """The upstream's state, and the waits of the requests that met it down."""

    def __init__(self, url: str, connect_timeout_ms: int, retry_connect_ms: int,
                 retry_max_requests: int, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        """`url`, `connect_timeout_ms`: the upstream's, for the checks while idle."""
        address = URL(url)
        self._address = (address.raw_host or "127.0.0.1",
                         address.port or (443 if address.scheme == "https" else 80))
        self._connect_timeout_s = connect_timeout_ms / 1000
        self._budget_s = retry_connect_ms / 1000
        self._max_waiting = retry_max_requests
        self._clock = clock
        self.state = UpstreamState(time.time(), retry_cap_ms(retry_connect_ms))
        self.waiting = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self._attempting = False
        self._closing = False
        self._last_refusal: Exception | None = None
        self._changed = asyncio.Event()
        self._idle_checks: asyncio.Task[None] | None = None

    async def connect(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`'s connection; while the upstream is down, tried again as above.
        Raises what `attempt` raises when it is not a refusal, else UpstreamError."""
        wait = self._budget_s > 0 and not NO_WAIT.get()
        if self.state.up or not wait:
            started = self._clock()
            try:
                connection = await attempt()
            except BaseException as exc:
                if not self._failed(exc) or not wait:
                    raise
                return await self._wait(attempt, Patience(started, self._budget_s))
            self._succeeded()
            return connection
        return await self._wait(attempt, Patience(self._clock(), self._budget_s))

    def close(self) -> None:
        """Shutting down: the waits end with the 502, and no new ones begin."""
        self._closing = True
        self._changed_now()

    # --- the wait of one request --------------------------------------------------------

    async def _wait(self, attempt: Callable[[], Awaitable[T]], patience: Patience) -> T:
        if self._closing or self.waiting >= self._max_waiting:
            self.outcomes[REJECTED] += 1
            raise self._unavailable("the proxy is shutting down" if self._closing
                                    else f"{self._max_waiting} requests already wait for it")
        self.waiting += 1
        try:
            connection = await self._retry(attempt, patience)
        except asyncio.CancelledError:
            self.outcomes[CANCELLED] += 1
            raise
        except BaseException:
            self.outcomes[TIMED_OUT] += 1
            raise
        finally:
            self.waiting -= 1
        self.outcomes[FORWARDED] += 1
        return connection

    async def _retry(self, attempt: Callable[[], Awaitable[T]], patience: Patience) -> T:
        state = self.state
        while True:
            if self._closing:
                raise self._unavailable("the proxy is shutting down")
            now = self._clock()
            if state.up:
                delay: float | None = 0.0
            else:
                delay = patience.wait_s(now, state.next_attempt_at)
                if delay is None:
                    raise self._unavailable(
                        f"not reachable within {round(self._budget_s * 1000)} ms")
            if self._attempting or delay:
                # Someone else is trying, or the backoff runs: until a change, the next
                # attempt's time, or this request's deadline.
                await self._next_change(delay or patience.left_s(now))
                continue
            # This request's turn; while up, everyone's (their own connections).
            single = not state.up
            self._attempting = single
            try:
                connection = await attempt()
            except BaseException as exc:
                # While down, any failure to connect is one more failed attempt; only
                # cancellation (the client went away) ends the wait at once.
                if not self._failed(exc, down=single):
                    raise
                continue
            finally:
                if single:
                    self._attempting = False
                    self._changed_now()
            self._succeeded()
            return connection

    async def _next_change(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()
        except TimeoutError:
            pass

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- while down and idle ----------------------------------------------------------------

    async def _check_while_idle(self) -> None:
        state = self.state
        while not state.up and not self._closing:
            await self._next_change(IDLE_CHECK_S)
            if state.up or self._closing or self.waiting or self._attempting \
                    or self._clock() < state.next_attempt_at:
                continue  # back, or the waiting requests' attempts tell
            self._attempting = True
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    _, writer = await asyncio.open_connection(*self._address)
                writer.close()
            except (OSError, TimeoutError) as exc:
                self._failed(exc, down=True)
            else:
                self._succeeded()
            finally:
                self._attempting = False
                self._changed_now()

    # --- the state -------------------------------------------------------------------------

    def _failed(self, exc: BaseException, down: bool = False) -> bool:
        """Record a failed attempt: True when it counts against the upstream (a refusal;
        while `down`, any failure to connect)."""
        if not isinstance(exc, Exception):
            return False
        error = classify(exc)
        if error.code in RETRYABLE:
            self._last_refusal = exc
        elif not down:
            return False
        if self.state.failed(self._clock(), time.time(), error.code, error.message):
            log.warning("upstream_down", errorCode=error.code, message=error.message,
                        retryConnectMs=round(self._budget_s * 1000))
            self._changed_now()
            if self._idle_checks is None or self._idle_checks.done():
                self._idle_checks = asyncio.get_running_loop().create_task(
                    self._check_while_idle(), name="upstream:idle-checks")
        return True

    def _succeeded(self) -> None:
        recovery = self.state.succeeded(self._clock(), time.time())
        if recovery is not None:
            log.info("upstream_recovered", downForMs=round(recovery.down_for_s * 1000),
                     held=self.waiting)
            self._changed_now()

    def _unavailable(self, why: str) -> UpstreamError:
        # The 502 a refusal gets, with why the wait ended.
        error = failure(self._last_refusal, 0) if self._last_refusal is not None \
            else UpstreamError(UNAVAILABLE, "the upstream is unavailable")
        return UpstreamError(error.code, f"{error.message} ({why})")
