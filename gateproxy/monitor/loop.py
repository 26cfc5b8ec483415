"""The probe loop of one dependency: probes, feeds the status, logs what changed.

It never raises. Besides its own schedule it probes on demand, at most one probe at a
time and one a second: a gated request while the dependency is down and requests held
for it (`hold_ms`), so that a recovery under traffic is seen within about a second; an
answer of the upstream that points at the dependency while it is up (`recheck_on_status`),
so that a failure is seen within about a second too. It also holds the dependency's
maintenance switch (admin endpoint) and wakes whoever waits for a change of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from gateproxy.core.dependency import DependencyStatus, Maintenance, Outcome, iso
from gateproxy.core.model import Dependency
from gateproxy.core.watch import GATED, HELD, SCHEDULE, Watch
from gateproxy.logs import log
from gateproxy.monitor.probe import Prober, ProbeResult

RECHECK_AFTER_S = 1.0
# What to look at first, for the failures whose cause is on this side.
HINTS = {
    "grpc_unauthenticated": "docker-runner refused the signature: check that "
    "DOCKER_RUNNER_SHARED_SECRET is the runner's, and both clocks (60 s skew allowed)",
}


class Monitor:
    """Probes one dependency on its schedule and on demand; the status's only writer."""

    def __init__(self, status: DependencyStatus, prober: Prober,
                 clock: Callable[[], float] = time.time,
                 on_result: Callable[[DependencyStatus, ProbeResult], None] | None = None,
                 on_maintenance: Callable[[DependencyStatus], None] | None = None) -> None:
        self.status = status
        self._prober = prober
        self._clock = clock
        self._on_result = on_result
        self._on_maintenance = on_maintenance
        self._wake = asyncio.Event()
        # Set and replaced on every change of state or maintenance: wakes all its waiters.
        self._changed = asyncio.Event()
        self._probing = False
        self._last_probe_end = 0.0  # monotonic
        self._trigger: str | None = None  # the pending wake-up's, from request_recheck
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

    async def probe_once(self, trigger: str = SCHEDULE) -> Outcome:
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
        if outcome.transition is not None or outcome.exhausted:
            self._changed_now()
        self._log(result, outcome, trigger)
        if self._on_result is not None:
            self._on_result(self.status, result)
        return outcome

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout_s: float) -> None:
        """Wait (bounded) for the next change of state or maintenance (a first probe's
        result is one)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()

    async def hold(self, timeout_s: float, limit: int) -> bool:
        """Wait (bounded) for a change, as one of at most `limit` held requests, probing
        about once a second meanwhile; False at once when `limit` already wait."""
        status = self.status
        if status.held >= limit:
            return False
        status.held += 1
        self._wake.set()  # the probe loop shortens its pause while requests are held
        try:
            await self.wait_change(timeout_s)
        finally:
            status.held -= 1
        return True

    def request_recheck(self, trigger: str = GATED) -> None:
        """Traffic says the state may be stale: probe now unless one runs or just ran."""
        if (not self._probing and not self.status.retries_exhausted
                and time.monotonic() - self._last_probe_end > RECHECK_AFTER_S):
            self._trigger = trigger
            self._wake.set()

    def start_maintenance(self, reason: str | None, **caller: object) -> bool:
        """Close the gated routes until `end_maintenance`, whatever the probes say;
        False when maintenance was already on (its start and reason stay). Logged
        either way, with `caller` (who asked: the admin endpoint's peer and token)."""
        current = self.status.maintenance
        if current is not None:
            log.warning("maintenance_started", dependency=self.dep.name, reason=current.reason,
                        changed=False, **caller)
            return False
        self.status.set_maintenance(Maintenance(self._clock(), reason))
        log.warning("maintenance_started", dependency=self.dep.name, reason=reason,
                    changed=True, **caller)
        self._maintenance_changed()
        return True

    def end_maintenance(self, **caller: object) -> bool:
        """End maintenance; False when it was not on. Logged either way, as
        `start_maintenance`."""
        maintenance = self.status.maintenance
        if maintenance is None:
            log.warning("maintenance_ended", dependency=self.dep.name, changed=False,
                        **caller)
            return False
        self.status.set_maintenance(None)
        log.warning("maintenance_ended", dependency=self.dep.name, reason=maintenance.reason,
                    durationMs=round((self._clock() - maintenance.since) * 1000),
                    changed=True, **caller)
        self._maintenance_changed()
        return True

    def _maintenance_changed(self) -> None:
        self._changed_now()
        if self._on_maintenance is not None:
            self._on_maintenance(self.status)

    async def _run(self) -> None:
        trigger = SCHEDULE
        while True:
            try:
                outcome = await self.probe_once(trigger)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a bug end the loop: log, back off, go on
                log.opt(exception=True).error("monitor_error", dependency=self.dep.name)
                outcome = Outcome(None, self.dep.retry.max_delay_ms, False)
            if outcome.next_delay_ms is None:
                return  # retries exhausted: a reload starts the loop again
            trigger = await self._pause(outcome.next_delay_ms / 1000)

    async def _pause(self, delay_s: float) -> str:
        """Wait for the next probe: `delay_s`, or less for a recheck asked meanwhile, or
        one second after the last probe while requests are held. Its trigger."""
        self._trigger = None
        deadline = time.monotonic() + delay_s
        while True:
            self._wake.clear()
            now = time.monotonic()
            timeout = deadline - now
            held = self.status.held > 0
            if held:
                timeout = min(timeout, self._last_probe_end + RECHECK_AFTER_S - now)
            if timeout <= 0:
                return HELD if held and now < deadline else SCHEDULE
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            if self._trigger is not None:
                trigger, self._trigger = self._trigger, None
                return trigger

    def _log(self, result: ProbeResult, outcome: Outcome, trigger: str) -> None:
        status = self.status
        dep = self.dep
        if result.error is not None:
            # Traffic-driven rechecks must not make the log grow with the request rate:
            # a failure gets an ERROR line only as often as the backoff alone would.
            now = time.monotonic()
            on_demand = trigger != SCHEDULE
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
                trigger=trigger,
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


async def first_required_down(watches: Iterable[Watch]) -> str | None:
    """Probe each required (`optional: false`) dependency once, for the fail-fast start:
    what is wrong with the first one that is not up, or None."""
    for watch in watches:
        if not isinstance(watch, Monitor) or watch.status.dep.optional:
            continue
        status = watch.status
        await watch.probe_once()
        if not status.is_up:
            error = status.last_error
            return (f"required dependency {status.dep.name} is not ready "
                    f"({error.code if error else 'unknown'}: "
                    f"{error.message if error else ''})")
    return None
