"""/health: the upstream's own health answer with every dependency's snapshot added; and
what `ready` answers.

Reads the statuses, never writes them. An optional dependency being down never turns
the answer into an error; a required one does. A client that asks for
`application/health+json` gets the same facts in the IETF draft "Health Check Response
Format for HTTP APIs" form instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from gateproxy.core.answers import Answer
from gateproxy.core.dependency import DependencyStatus, State, iso
from gateproxy.upstream.interface import NO_WAIT, UpstreamClient, UpstreamError

_BODY_LIMIT = 1024 * 1024
HEALTH_JSON = "application/health+json"
# The answer depends on Accept, so caches must key on it.
HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store", "Vary": "Accept"}
HEALTH_JSON_HEADERS = {**HEADERS, "Content-Type": HEALTH_JSON}
_PLAIN_JSON = frozenset({"application/json", "application/*", "*/*"})
_CHECK_STATUS = {State.UP: "pass", State.DOWN: "fail", State.UNKNOWN: "warn"}


class UpstreamHealth:
    """What the upstream said on its own health path."""

    __slots__ = ("body", "error", "status")

    def __init__(self, status: int | None, body: Any, error: dict[str, str] | None) -> None:
        self.status = status
        self.body = body
        self.error = error


async def ask_upstream(client: UpstreamClient, path: str, host: str | None,
                       timeout_ms: int) -> UpstreamHealth:
    fields = [(b"Host", host.encode("latin-1"))] if host else []
    fields.append((b"Accept", b"application/json"))
    # The upstream's health now, not after riding out its restart (upstream/reconnect.py).
    no_wait = NO_WAIT.set(True)
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            resp = await client.fetch("GET", path, fields)
            try:
                chunks = []
                size = 0
                async for chunk in resp.iter_chunks():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > _BODY_LIMIT:
                        break
            finally:
                resp.close()
    except TimeoutError:
        return UpstreamHealth(None, None, {
            "code": "upstream_timeout", "message": f"no answer within {timeout_ms} ms"})
    except UpstreamError as exc:
        return UpstreamHealth(None, None, {"code": exc.code, "message": exc.message})
    finally:
        NO_WAIT.reset(no_wait)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        body = None
    return UpstreamHealth(resp.status, body, None)


def readiness(draining: bool, serving: bool, statuses: Iterable[DependencyStatus]
              ) -> tuple[int, dict[str, Any]]:
    """What `ready` answers: 503 while shutting down, starting, or while a required
    dependency is not up."""
    if draining:
        return 503, {"status": "not_ready", "reason": "shutting_down"}
    if not serving:
        return 503, {"status": "not_ready", "reason": "starting"}
    down = [s.dep.name for s in statuses if not s.dep.optional and not s.is_up]
    if down:
        return 503, {"status": "not_ready", "reason": "dependency_down", "dependencies": down}
    return 200, {"status": "ready"}


def _required_down(statuses: Sequence[DependencyStatus]) -> bool:
    return any(not s.dep.optional and not s.is_up for s in statuses)


def aggregate(upstream: UpstreamHealth, statuses: Sequence[DependencyStatus],
              now: float) -> tuple[int, dict[str, Any]]:
    """The status code and body of /health (README, "/health"); its `timestamp` is `now`
    unless the upstream sent its own."""
    snapshots = {s.dep.health_key: s.snapshot() for s in statuses}
    required_down = _required_down(statuses)
    timestamp = iso(now)
    if upstream.status is None:
        return 503, {
            "status": "error",
            "timestamp": timestamp,
            "upstream": {"status": "down", "error": upstream.error},
            "dependencies": snapshots,
        }
    code = upstream.status
    if isinstance(upstream.body, dict):
        body = dict(upstream.body)
        if body.get("timestamp") is None:
            body["timestamp"] = timestamp
        deps = body.get("dependencies")
        body["dependencies"] = {**(deps if isinstance(deps, dict) else {}), **snapshots}
    else:
        ok = 200 <= code < 300
        body = {
            "status": "ok" if ok else "error",
            "timestamp": timestamp,
            "upstream": {"status": "up" if ok else "error", "statusCode": code},
            "dependencies": snapshots,
        }
    if required_down:
        code = 503
        body["status"] = "error"
    return code, body


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def wants_health_json(accept: str) -> bool:
    """Whether `Accept` prefers application/health+json to plain JSON (a tie goes to
    health+json, the more specific type)."""
    if "health+json" not in accept.lower():
        return False
    health = plain = 0.0
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        if media == HEALTH_JSON:
            health = max(health, _quality(params))
        elif media in _PLAIN_JSON:
            plain = max(plain, _quality(params))
    return health > 0 and health >= plain


def health_json(upstream: UpstreamHealth, statuses: Sequence[DependencyStatus],
                now: float) -> tuple[int, dict[str, Any]]:
    """The status code and body in the IETF draft form: `fail` (503) when the upstream is
    not healthy or a required dependency is not up, `warn` when only optional ones are
    not, `pass` otherwise."""
    upstream_ok = upstream.status is not None and 200 <= upstream.status < 300
    upstream_check: dict[str, Any] = {
        "componentType": "system", "status": "pass" if upstream_ok else "fail",
        "time": iso(now)}
    if upstream.status is not None:
        upstream_check["observedValue"] = upstream.status
        upstream_check["observedUnit"] = "HTTP status"
    if upstream.error is not None:
        upstream_check["output"] = f"{upstream.error['code']}: {upstream.error['message']}"
    checks: dict[str, list[dict[str, Any]]] = {"upstream:health": [upstream_check]}
    for s in statuses:
        check: dict[str, Any] = {
            "componentId": s.dep.name,
            "componentType": "component",
            "status": _CHECK_STATUS[s.state],
            "time": iso(s.last_checked_at or now),
            "affectedEndpoints": list(dict.fromkeys(r.prefix for r in s.dep.gated_routes)),
        }
        if s.last_duration_ms is not None:
            check["observedValue"] = s.last_duration_ms
            check["observedUnit"] = "ms"
        if s.last_error is not None:
            check["output"] = f"{s.last_error.code}: {s.last_error.message}"
        checks[f"{s.dep.name}:readiness"] = [check]
    if not upstream_ok or _required_down(statuses):
        return 503, {"status": "fail", "checks": checks}
    if any(not s.is_up for s in statuses):
        return 200, {"status": "warn", "checks": checks}
    return 200, {"status": "pass", "checks": checks}


async def health_response(headers: Mapping[str, str], client: UpstreamClient, path: str,
                          timeout_ms: int, statuses: Sequence[DependencyStatus]
                          ) -> Answer:
    """The answer to `/health`, for a request with these `headers`."""
    upstream = await ask_upstream(client, path, headers.get("Host"), timeout_ms)
    if wants_health_json(headers.get("Accept", "")):
        code, body = health_json(upstream, statuses, time.time())
        headers = HEALTH_JSON_HEADERS
    else:
        code, body = aggregate(upstream, statuses, time.time())
        headers = HEADERS
    return Answer(code, tuple(headers.items()), orjson.dumps(body))
