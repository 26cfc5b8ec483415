"""The gate: decides from memory whether a request may pass, and builds the 503.

Per request it canonicalises the path once and walks a dict; the dependency status is
an attribute read. Everything else (bodies, header values) is prepared in advance.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson
from aiohttp import web

from gateproxy import routes
from gateproxy.monitor import Monitor
from gateproxy.routes import BadPath, RouteTable, Rule
from gateproxy.status import DependencyStatus

JSON = "application/json"


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


@dataclass(frozen=True, slots=True)
class Guard:
    """One dependency as the gate sees it."""

    status: DependencyStatus
    monitor: Monitor
    body: bytes  # the exact 503 body


def _is_blocking(guard: Guard) -> bool:
    return not guard.status.is_up


class Gate:
    def __init__(self, guards: Iterable[Guard], allow_origins: frozenset[str]) -> None:
        self.guards = tuple(guards)
        self.table: RouteTable[Guard] = RouteTable(
            Rule(route.prefix, route.methods, guard)
            for guard in self.guards
            for route in guard.status.dep.gated_routes
        )
        self._allow_origins = allow_origins
        self._any_origin = "*" in allow_origins

    def judge(self, method: str, target: str, headers: Mapping[str, str]) -> Rule[Guard] | None:
        """The rule of a dependency that is not up and covers this request, if any.
        Raises BadPath for a target no upstream should see."""
        path = routes.request_path(target)
        readings = routes.readings(path)
        if not self.table:
            return None
        if method == "OPTIONS" and "Access-Control-Request-Method" in headers:
            return None  # a CORS preflight: the upstream answers it as it always did
        for reading in readings:
            rule = self.table.match(method, reading, _is_blocking)
            if rule is not None:
                return rule
        return None

    def reject(self, guard: Guard, origin: str | None) -> web.Response:
        """The 503 for a gated request; never forwarded."""
        status = guard.status
        headers = {
            "Content-Type": JSON,
            "Cache-Control": "no-store",
            "Retry-After": str(status.retry_after_s(time.time())),
        }
        if origin is not None and (self._any_origin or origin in self._allow_origins):
            headers["Access-Control-Allow-Origin"] = "*" if self._any_origin else origin
            headers["Vary"] = "Origin"
        return web.Response(status=503, body=guard.body, headers=headers)


def bad_request(message: str) -> web.Response:
    return web.Response(status=400, body=error_body("bad_request", message),
                        content_type=JSON)


__all__ = ["BadPath", "Gate", "Guard", "bad_request", "error_body"]
