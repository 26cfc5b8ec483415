"""The proxy's own endpoints under `admin_prefix`: live, ready (and the operator views).

They only read state; none of them is ever forwarded or gated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from gateproxy.app import Gateway

_JSON = {"Content-Type": "application/json", "Cache-Control": "no-store"}


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), headers=_JSON)


def routes(gateway: Gateway, prefix: str) -> list[web.RouteDef]:
    async def live(_: web.Request) -> web.Response:
        return _json(200, {"status": "live"})

    async def ready(_: web.Request) -> web.Response:
        if gateway.draining:
            return _json(503, {"status": "not_ready", "reason": "shutting_down"})
        down = [s.dep.name for s in gateway.statuses() if not s.dep.optional and not s.is_up]
        if down:
            return _json(503, {"status": "not_ready", "reason": "dependency_down",
                               "dependencies": down})
        return _json(200, {"status": "ready"})

    return [
        web.get(f"{prefix}/live", live),
        web.get(f"{prefix}/ready", ready),
    ]
