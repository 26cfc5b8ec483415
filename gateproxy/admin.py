"""The proxy's own endpoints under `admin_prefix`: live, ready, the status page,
status.json and metrics (contract section 7).

They only read state; none of them is ever forwarded or gated. Nothing they show carries
a secret: base URLs are the redacted ones of the snapshots and the shared secret is not
part of any of it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import aiohttp_jinja2
import jinja2
import orjson
from aiohttp import web

from gateproxy import __version__
from gateproxy.metrics import CONTENT_TYPE
from gateproxy.status import DependencyStatus, iso

if TYPE_CHECKING:
    from gateproxy.app import Gateway

_JSON = {"Content-Type": "application/json", "Cache-Control": "no-store"}
# The page loads nothing from anywhere and talks only to its own origin.
_PAGE = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), headers=_JSON)


def readiness(gateway: Gateway) -> tuple[int, dict[str, Any]]:
    if gateway.draining:
        return 503, {"status": "not_ready", "reason": "shutting_down"}
    down = [s.dep.name for s in gateway.statuses() if not s.dep.optional and not s.is_up]
    if down:
        return 503, {"status": "not_ready", "reason": "dependency_down", "dependencies": down}
    return 200, {"status": "ready"}


def _dependency(status: DependencyStatus) -> dict[str, Any]:
    dep = status.dep
    return {
        "name": dep.name,
        "healthKey": dep.health_key,
        **status.snapshot(),
        "gatedRoutes": [{"prefix": r.prefix,
                         "methods": sorted(r.methods) if r.methods is not None else None}
                        for r in dep.gated_routes],
        "transitions": [t.as_dict() for t in reversed(status.transitions)],  # newest first
    }


def status_data(gateway: Gateway) -> dict[str, Any]:
    """What the status page shows, and status.json serves."""
    code, ready = readiness(gateway)
    return {
        "service": "gateproxy",
        "version": __version__,
        "now": iso(time.time()),
        "startedAt": iso(gateway.started_at),
        "ready": code == 200,
        "readiness": ready,
        "draining": gateway.draining,
        "config": gateway.config_version.as_dict(),
        "dependencies": [_dependency(s) for s in gateway.statuses()],
    }


def install(app: web.Application, gateway: Gateway) -> None:
    """Add the admin endpoints (and the page templates) to `app`."""
    prefix = gateway.config.admin_prefix
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("gateproxy", "templates"),
                         autoescape=True, default_helpers=False)

    async def live(_: web.Request) -> web.Response:
        return _json(200, {"status": "live"})

    async def ready(_: web.Request) -> web.Response:
        return _json(*readiness(gateway))

    async def status_json(_: web.Request) -> web.Response:
        return _json(200, status_data(gateway))

    async def status_page(request: web.Request) -> web.Response:
        response = aiohttp_jinja2.render_template(
            "status.html", request,
            {"state": status_data(gateway), "json_url": f"{prefix}/status.json",
             "metrics_url": f"{prefix}/metrics"})
        response.headers.update(_PAGE)
        return response

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=gateway.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})

    app.add_routes([
        web.get(f"{prefix}/live", live),
        web.get(f"{prefix}/ready", ready),
        web.get(f"{prefix}/status", status_page),
        web.get(f"{prefix}/status.json", status_json),
        web.get(f"{prefix}/metrics", metrics),
    ])
