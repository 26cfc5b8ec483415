"""The gate: one decision for every request the proxy's port receives. Pure.

`Gate.decide` reads the request line (method, target, two header names) and the live
dependency states, and says what happens: the proxy answers it itself (health, an admin
endpoint, 404 under the admin prefix), it is a bad request, it waits for a first probe,
it gets the gate's 503, or it is forwarded with the target to send. The usual aiohttp
path and the fast path both act on this one verdict; neither judges a path on its own.
The target forwarded is the path in the form it was judged (docs/gate.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from gateproxy import routes
from gateproxy.config import Config
from gateproxy.monitor import Monitor
from gateproxy.routes import BadPath, RouteTable, Rule
from gateproxy.status import DependencyStatus, State

JSON: Final = "application/json"
HEALTH: Final = "health"
NOT_FOUND: Final = "not_found"
# The proxy's own endpoints, under the admin prefix.
ADMIN_ENDPOINTS: Final = frozenset({"live", "ready", "status", "status.json", "metrics"})
_READ: Final = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Guard:
    """One dependency as the gate sees it."""

    status: DependencyStatus
    monitor: Monitor
    body: bytes  # the exact 503 body


@dataclass(frozen=True, slots=True)
class Forward:
    target: str  # the origin-form target to send upstream


@dataclass(frozen=True, slots=True)
class Reject:
    rule: Rule[Guard]  # the gated route; its target is the dependency that is not up


@dataclass(frozen=True, slots=True)
class Wait:
    guard: Guard  # its first probe is running: decide again when it ends


@dataclass(frozen=True, slots=True)
class BadRequest:
    message: str


@dataclass(frozen=True, slots=True)
class Own:
    endpoint: str  # HEALTH, NOT_FOUND or one of ADMIN_ENDPOINTS


Verdict = Forward | Reject | Wait | BadRequest | Own


def _is_blocking(guard: Guard) -> bool:
    return not guard.status.is_up


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
        self._health = routes.normalise(health_path)
        self._admin = routes.key(routes.normalise(admin_prefix)) if admin_prefix else None
        self._admin_len = len(self._admin or "")

    @classmethod
    def build(cls, guards: Iterable[Guard], config: Config) -> Gate:
        admin = config.admin_prefix if config.admin_port is None else None
        return cls(guards, config.cors.allow_origins, config.health_path, admin)

    def decide(self, method: str, target: str, headers: Mapping[str, str]) -> Verdict:
        """What happens to this request; see the module's docstring."""
        try:
            path, rest = routes.split_target(target)
            normal = routes.normalise(path)
        except BadPath as exc:
            return BadRequest(str(exc))
        if normal == self._health and method in _READ:
            return Own(HEALTH)
        admin = self._admin
        if admin is not None and normal[:self._admin_len].lower() == admin and (
                len(normal) == self._admin_len or normal[self._admin_len] == "/"):
            name = normal[self._admin_len + 1:]
            return Own(name if name in ADMIN_ENDPOINTS and method in _READ else NOT_FOUND)
        rule = self._blocking_rule(method, normal, headers)
        if rule is not None:
            guard = rule.target
            return Wait(guard) if guard.status.state is State.UNKNOWN else Reject(rule)
        return Forward(target if normal == path and target[0] == "/" else normal + rest)

    def _blocking_rule(self, method: str, normal: str,
                       headers: Mapping[str, str]) -> Rule[Guard] | None:
        for guard in self.guards:
            if not guard.status.is_up:
                break
        else:
            return None  # every dependency is up: nothing to look up
        if method == "OPTIONS" and "Access-Control-Request-Method" in headers:
            return None  # a CORS preflight: the upstream answers it as it always did
        for reading in routes.readings(normal):
            rule = self.table.match(method, reading, _is_blocking)
            if rule is not None:
                return rule
        return None

    def rejection_headers(self, guard: Guard, origin: str | None) -> list[tuple[str, str]]:
        """The headers of the gate's 503, in the order they are written."""
        headers = [
            ("Content-Type", JSON),
            ("Cache-Control", "no-store"),
            ("Retry-After", str(guard.status.retry_after_s(time.time()))),
        ]
        if origin is not None and (self._any_origin or origin in self._allow_origins):
            headers.append(("Access-Control-Allow-Origin", "*" if self._any_origin else origin))
            headers.append(("Vary", "Origin"))
        return headers


__all__ = ["ADMIN_ENDPOINTS", "HEALTH", "JSON", "NOT_FOUND", "BadRequest", "Forward", "Gate",
           "Guard", "Own", "Reject", "Verdict", "Wait"]
