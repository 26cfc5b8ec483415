"""The probe loop of one dependency: probes, feeds the status, logs what changed.

It never raises. Besides its own schedule it probes on demand (a gated request while the
dependency is down) so that a recovery under traffic is seen within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from gateproxy.config import Dependency
from gateproxy.logs import log
from gateproxy.probe import Prober, ProbeResult
from gateproxy.status import DependencyStatus, Outcome, State, iso

RECHECK_AFTER_S = 1.0
# What to look at first, for the failures whose cause is on this side.
HINTS = {
    "grpc_unauthenticated": "docker-runner refused the signature: check that "
    "DOCKER_RUNNER_SHARED_SECRET is the runner's, and both clocks (60 s skew allowed)",
}


class Monitor:
    def __init__(self, status: DependencyStatus, prober: Prober,
                 clock: Callable[[], float] = time.time,
                 on_result: Callable[[DependencyStatus, ProbeResult], None] | None = None
                 ) -> None:
        self.status = status
        self._prober = prober
        self._clock = clock
        self._on_result = on_result
        self._wake = asyncio.Event()
        self._first_done = asyncio.Event()
        self._probing = False
        self._last_probe_end = 0.0  # monotonic
        self._on_demand = False  # the pending wake-up came from request_recheck
        self._quiet_until = 0.0  # monotonic; on-demand failures before it log at DEBUG
        self._task: asyncio.Task[None] | None = None

    @property
    def dep(self) -> Dependency:
        return self.status.dep

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"monitor:{self.dep.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._prober.forget(self.dep.name)

    def reconfigure(self, dep: Dependency) -> None:
        """New settings take effect at once; exhausted probing starts again."""
        was_exhausted = self.status.retries_exhausted
        self.status.reconfigure(dep)
        if was_exhausted or self._task is None or self._task.done():
            self.start()
        self._wake.set()

    async def probe_once(self, on_demand: bool = False) -> Outcome:
        """One probe, recorded and logged (also used for the fail-fast start)."""
        self._probing = True
        try:
            result = await self._prober.probe(self.dep)
        finally:
            self._probing = False
            self._last_probe_end = time.monotonic()
        now = self._clock()
        if result.error is None:
            outcome = self.status.record_success(now, result.duration_ms)
        else:
            outcome = self.status.record_failure(now, result.duration_ms, result.error)
        self._first_done.set()
        self._log(result, outcome, on_demand)
        if self._on_result is not None:
            self._on_result(self.status, result)
        return outcome

    async def wait_first(self, timeout_s: float) -> None:
        """Wait (bounded) for the first probe result while the status is unknown."""
        if self.status.state is State.UNKNOWN:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._first_done.wait()

    def request_recheck(self) -> None:
        """A gated request saw the dependency down: probe now unless one just ran."""
        if (not self._probing and not self.status.retries_exhausted
                and time.monotonic() - self._last_probe_end > RECHECK_AFTER_S):
            self._on_demand = True
            self._wake.set()

    async def _run(self) -> None:
        on_demand = False
        while True:
            try:
                outcome = await self.probe_once(on_demand)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a bug end the loop: log, back off, go on
                log.opt(exception=True).error("monitor_error", dependency=self.dep.name)
                outcome = Outcome(None, self.dep.retry.max_delay_ms, False)
            if outcome.next_delay_ms is None:
                return  # retries exhausted: a reload starts the loop again
            self._wake.clear()
            self._on_demand = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(outcome.next_delay_ms / 1000):
                    await self._wake.wait()
            on_demand = self._on_demand

    def _log(self, result: ProbeResult, outcome: Outcome, on_demand: bool) -> None:
        status = self.status
        dep = self.dep
        if result.error is not None:
            # Traffic-driven rechecks must not make the log grow with the request rate:
            # a failure gets an ERROR line only as often as the backoff alone would.
            now = time.monotonic()
            level = "DEBUG" if on_demand and now < self._quiet_until else "ERROR"
            if level == "ERROR":
                self._quiet_until = now + (outcome.next_delay_ms or 0) / 1000
            hint = HINTS.get(result.error.code)
            log.log(
                level,
                "probe_failed",
                dependency=dep.name,
                probe=dep.probe,
                baseUrl=status.base_url,
                **({"hint": hint} if hint else {}),
                errorCode=result.error.code,
                message=result.error.message,
                statusCode=result.error.status_code,
                retryInMs=outcome.next_delay_ms,
                nextRetryAt=iso(status.next_retry_at),
                consecutiveFailures=status.consecutive_failures,
                status=status.state.value,
            )
            if outcome.exhausted:
                log.error("retries_exhausted", dependency=dep.name, probe=dep.probe,
                          baseUrl=status.base_url,
                          consecutiveFailures=status.consecutive_failures,
                          maxRetries=dep.retry.max_retries)
            return
        transition = outcome.transition
        if transition is None:
            log.debug("probe_ok", dependency=dep.name, durationMs=result.duration_ms)
        elif transition.down_for_ms is not None:
            log.info("dependency_recovered", dependency=dep.name, probe=dep.probe,
                     baseUrl=status.base_url, downForMs=transition.down_for_ms)
        else:
            log.info("dependency_up", dependency=dep.name, probe=dep.probe,
                     baseUrl=status.base_url, durationMs=result.duration_ms)
