"""The gate: one decision for every request the proxy's port receives. Pure.

`Gate.decide` reads the request line (method, target, two header names) and the live
dependency states, and says what happens: the proxy answers it itself (health, an admin
endpoint, 404 under the admin prefix), it is a bad request, it waits (for a first probe,
or, with `hold_ms`, for a dependency that is down to come back), it gets the gate's 503,
or it is forwarded with the target to send. A dependency in maintenance is not up for the
gate, whatever its probes say. The planner acts on this one verdict; nothing else
judges a path.
The target forwarded is the path in the form it was judged (docs/gate.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Final

from gateproxy.core import paths
from gateproxy.core.dependency import DependencyStatus, State
from gateproxy.core.model import Config
from gateproxy.core.paths import BadPath, RouteTable, Rule
from gateproxy.core.watch import Watch

JSON: Final = "application/json"
HEALTH: Final = "health"
NOT_FOUND: Final = "not_found"
SERVER_OPTIONS: Final = "*"  # `OPTIONS *`: what the server as a whole allows
# The proxy's own endpoints, under the admin prefix.
ADMIN_ENDPOINTS: Final = frozenset({"live", "ready", "status", "status.json", "metrics"})
_READ: Final = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Guard:
    """One dependency as the gate sees it."""

    status: DependencyStatus
    monitor: Watch
    body: bytes  # the exact 503 body


@dataclass(frozen=True, slots=True)
class Forward:
    target: str  # the origin-form target to send upstream


@dataclass(frozen=True, slots=True)
class Reject:
    rule: Rule[Guard]  # the gated route; its target is the dependency that is not up


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait for a change of the guard's dependency, then decide again (`waited=True`):
    its first probe is running, or it is down and holds its requests (`hold`)."""

    guard: Guard
    hold: bool = False

    @property
    def timeout_s(self) -> float:
        dep = self.guard.status.dep
        return (dep.hold_ms if self.hold else dep.probe_timeout_ms) / 1000


@dataclass(frozen=True, slots=True)
class BadRequest:
    message: str


@dataclass(frozen=True, slots=True)
class Own:
    endpoint: str  # HEALTH, NOT_FOUND, SERVER_OPTIONS or one of ADMIN_ENDPOINTS


Verdict = Forward | Reject | Wait | BadRequest | Own


def _only(guard: Guard) -> Callable[[Guard], bool]:
    return lambda other: other is guard


def _is_blocking(guard: Guard) -> bool:
    return not guard.status.admits


class Gate:
    """The gated routes of every dependency, and the paths the proxy keeps for itself."""

    def __init__(self, guards: Iterable[Guard], allow_origins: frozenset[str],
                 health_path: str = "/health", admin_prefix: str | None = None) -> None:
        self.guards = tuple(guards)
        self.table: RouteTable[Guard] = RouteTable(
            Rule(route.prefix, route.methods, guard)
            for guard in self.guards
            for route in guard.status.dep.gated_routes
        )
        self._allow_origins = allow_origins
        self._any_origin = "*" in allow_origins
        self._health = paths.normalise(health_path)
        self._admin = paths.key(paths.normalise(admin_prefix)) if admin_prefix else None
        self._admin_len = len(self._admin or "")
        # Every dependency's recheck_on_status: an answer with another status (nearly
        # all of them) costs the passive check one set lookup.
        self.recheck_statuses = frozenset(
            code for guard in self.guards for code in guard.status.dep.recheck_on_status)

    @classmethod
    def build(cls, guards: Iterable[Guard], config: Config) -> Gate:
        admin = config.admin_prefix if config.admin_port is None else None
        return cls(guards, config.cors.allow_origins, config.health_path, admin)

    def decide(self, method: str, target: str, headers: Container[str],
               waited: bool = False) -> Verdict:
        """What happens to this request; see the module's docstring. `waited`: after a
        Wait, which is then not given again."""
        if "#" in target:  # RFC 9112 section 3.2: a request target has no fragment
            return BadRequest("the request target has a fragment (#)")
        try:
            path, rest = paths.split_target(target)
            normal = paths.normalise(path)
        except BadPath as exc:
            return BadRequest(str(exc))
        if normal == "*":  # the asterisk form (RFC 9112 section 3.2.4): OPTIONS only
            return Own(SERVER_OPTIONS) if method == "OPTIONS" else BadRequest(
                "the request target * is only for OPTIONS")
        if normal == self._health and method in _READ:
            return Own(HEALTH)
        admin = self._admin
        if admin is not None and normal[:self._admin_len].lower() == admin and (
                len(normal) == self._admin_len or normal[self._admin_len] == "/"):
            name = normal[self._admin_len + 1:]
            return Own(name if name in ADMIN_ENDPOINTS and method in _READ else NOT_FOUND)
        rule = self._blocking_rule(method, normal, headers)
        if rule is not None:
            status = rule.target.status
            if waited or status.maintenance is not None:
                return Reject(rule)
            if status.state is State.UNKNOWN:
                return Wait(rule.target)
            if status.dep.hold_ms and not status.retries_exhausted:
                return Wait(rule.target, hold=True)
            return Reject(rule)
        return Forward(target if normal == path and target[0] == "/" else normal + rest)

    def _blocking_rule(self, method: str, normal: str,
                       headers: Container[str]) -> Rule[Guard] | None:
        for guard in self.guards:
            if not guard.status.admits:
                break
        else:
            return None  # every dependency is up: nothing to look up
        if method == "OPTIONS" and "Access-Control-Request-Method" in headers:
            return None  # a CORS preflight: the upstream answers it as it always did
        for reading in paths.readings(normal):
            rule = self.table.match(method, reading, _is_blocking)
            if rule is not None:
                return rule
        return None

    def covering(self, method: str, target: str, status: int) -> list[Guard]:
        """The guards that are up, recheck on `status` and gate `method` on `target` (a
        forwarded target): whose dependency that answer may point at."""
        readings = paths.readings(paths.normalise(paths.split_target(target)[0]))
        return [guard for guard in self.guards
                if guard.status.is_up and status in guard.status.dep.recheck_on_status
                and any(self.table.match(method, reading, _only(guard)) is not None
                        for reading in readings)]

    def rejection_headers(self, guard: Guard, origin: str | None) -> list[tuple[str, str]]:
        """The headers of the gate's 503, in the order they are written."""
        return [("Content-Type", JSON), ("Cache-Control", "no-store"),
                ("Retry-After", str(self.retry_after_s(guard))), *self.cors(origin)]

    @staticmethod
    def retry_after_s(guard: Guard) -> int:
        """When to try again: the seconds to the dependency's next probe."""
        return guard.status.retry_after_s(time.time())

    def cors(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS lines of a gated answer to a request from `origin`: a browser script
        of an allowed origin may read it."""
        if origin is not None and (self._any_origin or origin in self._allow_origins):
            return [("Access-Control-Allow-Origin", "*" if self._any_origin else origin),
                    ("Vary", "Origin")]
        return []


__all__ = ["ADMIN_ENDPOINTS", "HEALTH", "JSON", "NOT_FOUND", "SERVER_OPTIONS", "BadRequest",
           "Forward", "Gate", "Guard", "Own", "Reject", "Verdict", "Wait"]
