"""/health: the upstream's own health answer with every dependency's snapshot added.

Reads the statuses, never writes them. An optional dependency being down never turns
the answer into an error; a required one does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from gateproxy.status import DependencyStatus
from gateproxy.upstream import UpstreamClient, UpstreamError

_BODY_LIMIT = 1024 * 1024
HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}


class UpstreamHealth:
    """What the upstream said on its own health path."""

    __slots__ = ("body", "error", "status")

    def __init__(self, status: int | None, body: Any, error: dict[str, str] | None) -> None:
        self.status = status
        self.body = body
        self.error = error


async def ask_upstream(client: UpstreamClient, path: str, host: str | None,
                       timeout_ms: int) -> UpstreamHealth:
    headers: CIMultiDict[str] = CIMultiDict({"Accept": "application/json"})
    if host:
        headers["Host"] = host
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            resp = await client.send("GET", path, headers, None)
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
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        body = None
    return UpstreamHealth(resp.status, body, None)


def aggregate(upstream: UpstreamHealth,
              statuses: Sequence[DependencyStatus]) -> tuple[int, dict[str, Any]]:
    """The status code and body of /health (contract section 6)."""
    snapshots = {s.dep.health_key: s.snapshot() for s in statuses}
    required_down = any(not s.dep.optional and not s.is_up for s in statuses)
    if upstream.status is None:
        return 503, {
            "status": "error",
            "upstream": {"status": "down", "error": upstream.error},
            "dependencies": snapshots,
        }
    code = upstream.status
    if isinstance(upstream.body, dict):
        body = dict(upstream.body)
        deps = body.get("dependencies")
        body["dependencies"] = {**(deps if isinstance(deps, dict) else {}), **snapshots}
    else:
        ok = 200 <= code < 300
        body = {
            "status": "ok" if ok else "error",
            "upstream": {"status": "up" if ok else "error", "statusCode": code},
            "dependencies": snapshots,
        }
    if required_down:
        code = 503
        body["status"] = "error"
    return code, body


async def health_response(request: web.BaseRequest, client: UpstreamClient, path: str,
                          timeout_ms: int, statuses: Sequence[DependencyStatus]
                          ) -> web.Response:
    upstream = await ask_upstream(client, path, request.headers.get("Host"), timeout_ms)
    code, body = aggregate(upstream, statuses)
    return web.Response(status=code, body=orjson.dumps(body), headers=HEADERS)
