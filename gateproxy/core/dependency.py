"""DependencyStatus: the pure state machine of one dependency, and its snapshot.

No I/O and no clock of its own: the monitor passes the time in, so every rule
(thresholds, backoff, exhaustion) is tested without sleeping.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from gateproxy.core.backoff import retry_delay_ms
from gateproxy.core.history import ProbeSeries, StateTimeline
from gateproxy.core.model import Dependency, redact_url

# The platform-server's `error.name` for every probe failure: one stable string of the
# proxy's own, so that a dashboard can match on it (never a library's class name).
ERROR_NAME: Final = "DependencyProbeError"
# Failures that probing again cannot fix: the dependency refused the proxy's credentials
# (the shared secret), a configuration fault.
CONFIG_FAULT_CODES: Final = frozenset({
    "http_401", "http_403", "grpc_unauthenticated", "grpc_permission_denied"})


def is_retryable(code: str, retries_exhausted: bool) -> bool:
    """Whether the failure may go away by itself: not once gateproxy stopped probing, nor
    for a configuration fault."""
    return not retries_exhausted and code not in CONFIG_FAULT_CODES


def probe_url(base_url: str, ready_path: str) -> str:
    """Where an HTTP dependency is asked for readiness (config strips base_url's
    trailing slash)."""
    return base_url + ready_path


class State(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class ProbeError:
    code: str
    message: str
    status_code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.status_code is not None:
            out["statusCode"] = self.status_code
        return out

    def platform_error(self, retryable: bool) -> dict[str, Any]:
        """The failure in the platform-server's `error` shape (`statusCode` only when the
        dependency answered over HTTP, as in `as_dict`)."""
        out: dict[str, Any] = {"name": ERROR_NAME, "message": self.message}
        if self.status_code is not None:
            out["statusCode"] = self.status_code
        out["errorCode"] = self.code
        out["retryable"] = retryable
        return out


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    old: State
    new: State
    error: ProbeError | None
    down_for_ms: int | None  # set when the dependency came back up after being down

    def as_dict(self) -> dict[str, Any]:
        return {"at": iso(self.at), "from": self.old.value, "to": self.new.value,
                "error": self.error.as_dict() if self.error else None}


@dataclass(frozen=True, slots=True)
class Maintenance:
    """An operator closed the dependency's gated routes by hand (admin endpoint)."""

    since: float
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"since": iso(self.since), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one probe result changed, and when to probe next (None: stop probing)."""

    transition: Transition | None
    next_delay_ms: int | None
    exhausted: bool  # true only on the result that exhausted the retries


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


HISTORY = 50
CHART_POINTS = 300  # probe durations in status.json: the slowest of each 1/300 of the hour


class DependencyStatus:
    """Everything known about one dependency; only the monitor writes it."""

    def __init__(self, dep: Dependency, rng: random.Random | None = None) -> None:
        self.dep = dep
        self.rng = rng or random.Random()
        self.base_url = redact_url(dep.base_url)
        self.state = State.UNKNOWN
        self.maintenance: Maintenance | None = None
        # Whether the gate lets its routes through: up and not in maintenance. A plain
        # attribute, kept in step by _move and set_maintenance: the gate reads it per request.
        self.admits = False
        self.held = 0  # requests waiting for it to come back (hold_ms)
        self.since: float | None = None
        self.last_checked_at: float | None = None
        self.last_success_at: float | None = None
        self.last_failure_at: float | None = None
        self.last_duration_ms: int | None = None
        self.last_error: ProbeError | None = None
        self.next_retry_at: float | None = None
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.total_checks = 0
        self.total_failures = 0
        self.retries_exhausted = False
        self.down_since: float | None = None
        self.transitions: deque[Transition] = deque(maxlen=HISTORY)
        # The last hour for the status page (the first probe result starts it).
        self.timeline = StateTimeline()
        self.probes = ProbeSeries()

    @property
    def is_up(self) -> bool:
        return self.state is State.UP

    def set_maintenance(self, maintenance: Maintenance | None) -> None:
        self.maintenance = maintenance
        self.admits = self.is_up and maintenance is None

    def reconfigure(self, dep: Dependency) -> None:
        """Take new settings (live reload); a reload restarts exhausted probing."""
        self.dep = dep
        self.base_url = redact_url(dep.base_url)
        if self.retries_exhausted:
            self.retries_exhausted = False
            self.consecutive_failures = 0

    def record_success(self, now: float, duration_ms: int) -> Outcome:
        self._checked(now, duration_ms, True)
        self.last_success_at = now
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        transition = None
        if self.state is State.UNKNOWN or (
            self.state is State.DOWN
            and self.consecutive_successes >= self.dep.healthy_threshold
        ):
            transition = self._move(State.UP, now, None)
        if self.state is State.UP:
            self.last_error = None
            delay = self.dep.probe_interval_ms
        else:
            # Confirming a recovery: probe again soon rather than after the backoff.
            delay = self.dep.retry.base_delay_ms
        self.next_retry_at = now + delay / 1000
        return Outcome(transition, delay, False)

    def record_failure(self, now: float, duration_ms: int, error: ProbeError) -> Outcome:
        self._checked(now, duration_ms, False)
        self.last_failure_at = now
        self.last_error = error
        self.total_failures += 1
        self.consecutive_failures += 1
        self.consecutive_successes = 0
        transition = None
        if self.state is State.UNKNOWN or (
            self.state is State.UP
            and self.consecutive_failures >= self.dep.unhealthy_threshold
        ):
            transition = self._move(State.DOWN, now, error)
        max_retries = self.dep.retry.max_retries
        if max_retries and self.consecutive_failures >= max_retries and not self.is_up:
            self.retries_exhausted = True
            self.next_retry_at = None
            return Outcome(transition, None, True)
        retry = self.dep.retry
        delay = retry_delay_ms(self.consecutive_failures, retry.base_delay_ms,
                               retry.max_delay_ms, retry.jitter_ms, self.rng)
        self.next_retry_at = now + delay / 1000
        return Outcome(transition, delay, False)

    def retry_after_s(self, now: float) -> int:
        """Whole seconds until the next probe, at least 1 (the Retry-After header)."""
        if self.next_retry_at is None:
            if self.retries_exhausted:
                return max(1, -(-self.dep.retry.max_delay_ms // 1000))
            return 1
        return max(1, -int((now - self.next_retry_at) // 1))

    def _checked(self, now: float, duration_ms: int, ok: bool) -> None:
        self.total_checks += 1
        self.last_checked_at = now
        self.last_duration_ms = duration_ms
        self.probes.record(now, duration_ms, ok)

    def _move(self, new: State, now: float, error: ProbeError | None) -> Transition:
        down_for_ms = None
        if new is State.DOWN:
            self.down_since = now
        elif self.down_since is not None:
            down_for_ms = round((now - self.down_since) * 1000)
            self.down_since = None
        transition = Transition(now, self.state, new, error, down_for_ms)
        self.state = new
        self.admits = new is State.UP and self.maintenance is None
        self.since = now
        self.transitions.append(transition)
        self.timeline.record(now, new.value)
        return transition

    # What the gate and /health read, and all another process needs to mirror them.
    _MIRRORED = ("since", "last_checked_at", "last_success_at", "last_failure_at",
                 "last_duration_ms", "next_retry_at", "consecutive_failures",
                 "consecutive_successes", "total_checks", "total_failures",
                 "retries_exhausted", "down_since")

    def export(self) -> dict[str, Any]:
        """The state as plain data, for a worker process to `mirror` (the supervisor sends it,
        gateproxy/workers/supervisor.py; a worker takes it, gateproxy/workers/control.py)."""
        error, maintenance = self.last_error, self.maintenance
        return {"state": self.state.value,
                "last_error": None if error is None else
                [error.code, error.message, error.status_code],
                "maintenance": None if maintenance is None else
                [maintenance.since, maintenance.reason],
                **{name: getattr(self, name) for name in self._MIRRORED}}

    def mirror(self, exported: dict[str, Any]) -> None:
        """Take the state another process `export`ed (a worker follows the supervisor)."""
        self.state = State(exported["state"])
        error, maintenance = exported["last_error"], exported["maintenance"]
        self.last_error = None if error is None else ProbeError(*error)
        for name in self._MIRRORED:
            setattr(self, name, exported[name])
        self.set_maintenance(None if maintenance is None else Maintenance(*maintenance))

    def snapshot(self) -> dict[str, Any]:
        """The camelCase view /health and status.json show, with the platform-server's own
        fields of a dependency (`endpoint`; `error` while the last probe failed) beside
        gateproxy's."""
        endpoint = (self.base_url if self.dep.probe == "grpc"
                    else probe_url(self.base_url, self.dep.ready_path))
        error: dict[str, Any] = {}
        # The last probe failed: a failure zeroes consecutive_successes, a success (even
        # one only confirming a recovery) raises it. Not consecutive_failures > 0: a reload
        # that restarts exhausted probing zeroes that while the dependency still fails.
        if self.last_error is not None and self.consecutive_successes == 0:
            error = {"error": self.last_error.platform_error(
                is_retryable(self.last_error.code, self.retries_exhausted))}
        return {
            "status": self.state.value,
            "baseUrl": self.base_url,
            "endpoint": endpoint,
            "probe": self.dep.probe,
            "optional": self.dep.optional,
            "since": iso(self.since),
            "lastCheckedAt": iso(self.last_checked_at),
            "lastSuccessAt": iso(self.last_success_at),
            "lastFailureAt": iso(self.last_failure_at),
            "lastDurationMs": self.last_duration_ms,
            "lastError": self.last_error.as_dict() if self.last_error else None,
            **error,
            "nextRetryAt": iso(self.next_retry_at),
            "consecutiveFailures": self.consecutive_failures,
            "totalChecks": self.total_checks,
            "totalFailures": self.total_failures,
            "retriesExhausted": self.retries_exhausted,
            "maintenance": self.maintenance.as_dict() if self.maintenance else None,
        }

    def last_hour(self, now: float) -> dict[str, Any]:
        """The state spans and probe durations of the last hour (or since the first probe),
        in seconds since `from`: what the page draws as its strip and sparkline."""
        start = self.timeline.start(now)
        return {
            "from": iso(start),
            "spans": [{"state": s.state, "startS": round(s.start - start, 3),
                       "endS": round(s.end - start, 3)} for s in self.timeline.spans(now)],
            "probes": [{"atS": round(p.at - start, 3), "durationMs": p.duration_ms,
                        "ok": p.ok} for p in self.probes.points(start, now, CHART_POINTS)],
        }
