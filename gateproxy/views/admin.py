"""The proxy's own endpoints under `admin_prefix`: live, ready, the status page,
status.json and metrics (README, "The proxy's own endpoints"), and on `admin_port` only,
maintenance.

The first five only read state; none of them is ever forwarded or gated. Nothing they
show carries a secret: base URLs are the redacted ones of the snapshots and the shared
secret is not part of any of it. `POST`/`DELETE {admin}/dependencies/{name}/maintenance`
changes state, so it is served on the admin port only (the gate answers 404 for it on
the proxy's port) and only to whom gateproxy/core/access.py admits: the loopback, or with
`admin_token` set, a caller that has the token. Every handler here reads a
`LocalRequest` and gives an `Answer` (gateproxy/core/answers.py), which the one writer
writes: the HTTP core's on the proxy's port, gateproxy/serve/admin_port.py on the admin
port. The status page is rendered with jinja2 (autoescaped) from the package's templates.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateproxy import __version__
from gateproxy.core import access, answers
from gateproxy.core.answers import Answer
from gateproxy.core.dependency import DependencyStatus, iso
from gateproxy.core.gate import ADMIN_ENDPOINTS
from gateproxy.core.model import redact_url
from gateproxy.core.runtime import Runtime
from gateproxy.core.watch import Maintainable
from gateproxy.http_rules.actions import EndpointHandler, LocalRequest
from gateproxy.logs import log
from gateproxy.views import exposition
from gateproxy.views.counts import Family
from gateproxy.views.health import readiness

if TYPE_CHECKING:
    import jinja2


class View(Protocol):
    """What the admin endpoints read of the running proxy; they change nothing."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def draining(self) -> bool: ...

    @property
    def serving(self) -> bool:
        """Whether the proxy's port is served (a supervisor's workers may not be yet)."""

    @property
    def started_at(self) -> float: ...

    def statuses(self) -> list[DependencyStatus]: ...

    def families(self) -> list[Family]:
        """The proxy's metrics as numbers (a supervisor's: its workers' added up)."""

    def recent(self) -> dict[str, Any]:
        """Request counts of the last 5 and 60 minutes: `forwarded`, `gated` and `held`
        (the last two by dependency), as `Metrics.recent` gives them, `held` added; and
        `upstream`, the platform-server's row (`UpstreamState.snapshot`, `waiting`)."""

# The page loads nothing from anywhere and talks only to its own origin.
_PAGE = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
     "style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; "
     "form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
_METRICS = (("Content-Type", exposition.CONTENT_TYPE), ("Cache-Control", "no-store"))


_NONE = {"last5m": 0, "last60m": 0}


def _dependency(status: DependencyStatus, recent: dict[str, Any],
                now: float) -> dict[str, Any]:
    dep = status.dep
    return {
        "name": dep.name,
        "healthKey": dep.health_key,
        **status.snapshot(),
        "gatedRoutes": [{"prefix": r.prefix,
                         "methods": sorted(r.methods) if r.methods is not None else None}
                        for r in dep.gated_routes],
        "transitions": [t.as_dict() for t in reversed(status.transitions)],  # newest first
        "lastHour": status.last_hour(now),
        "gatedRequests": recent["gated"].get(dep.name, _NONE),
        "heldRequests": recent["held"].get(dep.name, 0),
    }


def status_data(view: View) -> dict[str, Any]:
    """What the status page shows, and status.json serves."""
    code, ready = readiness(view.draining, view.serving, view.statuses())
    now = time.time()
    recent = view.recent()
    return {
        "service": "gateproxy",
        "version": __version__,
        "now": iso(now),
        "startedAt": iso(view.started_at),
        "ready": code == 200,
        "readiness": ready,
        "draining": view.draining,
        "config": view.runtime.version.as_dict(),
        # Forwarded requests belong to no dependency: they are counted for the proxy.
        "forwardedRequests": recent["forwarded"],
        "upstream": _upstream(view, recent["upstream"]),
        "dependencies": [_dependency(s, recent, now) for s in view.statuses()],
    }


def _upstream(view: View, row: dict[str, Any]) -> dict[str, Any]:
    """The platform-server's row: as the proxy's connections find it (not probed)."""
    return {"name": "platform-server", "url": redact_url(view.runtime.config.upstream.url),
            **row, "since": iso(row["since"])}


@functools.cache
def _template() -> jinja2.Template:
    """The status page's template, loaded when the page is first asked for: a process
    whose page nobody opens never loads jinja2 (a tenth of its memory at start)."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("gateproxy", "templates"),
                                     autoescape=True)
    return environment.get_template("status.html")


def endpoints(view: View) -> dict[str, EndpointHandler]:
    """The admin endpoints by name (the path below the admin prefix)."""
    prefix = view.runtime.config.admin_prefix

    async def live(_: LocalRequest) -> Answer:
        return answers.json(200, {"status": "live"})

    async def ready(_: LocalRequest) -> Answer:
        return answers.json(*readiness(view.draining, view.serving, view.statuses()))

    async def status_json(_: LocalRequest) -> Answer:
        return answers.json(200, status_data(view))

    async def status_page(_: LocalRequest) -> Answer:
        page = _template().render(
            state=status_data(view), json_url=f"{prefix}/status.json",
            metrics_url=f"{prefix}/metrics")
        return Answer(200, _PAGE, page.encode())

    async def metrics(_: LocalRequest) -> Answer:
        return Answer(200, _METRICS, exposition.render(view.families()))

    handlers: dict[str, EndpointHandler] = {"live": live, "ready": ready, "status": status_page,
                                    "status.json": status_json, "metrics": metrics}
    assert handlers.keys() == ADMIN_ENDPOINTS
    return handlers


MAINTENANCE = "{prefix}/dependencies/{{name}}/maintenance"  # the route, under admin_prefix
_REASON_MAX = 500  # characters: a reason is a note for people, and it is logged


def _reason(raw: bytes) -> str | None:
    """The optional `{"reason": "..."}` body; ValueError saying what is wrong with it."""
    if not raw.strip():
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError("the body must be JSON: {\"reason\": \"...\"}") from exc
    if not isinstance(body, dict) or set(body) - {"reason"}:
        raise ValueError("the body may only have a \"reason\"")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > _REASON_MAX):
        raise ValueError(f"reason must be a string of at most {_REASON_MAX} characters")
    return reason or None


Maintenance = Callable[[LocalRequest, str, bytes], Awaitable[Answer]]


def maintenance_endpoint(view: View, denied: Callable[[str], None]) -> Maintenance:
    """POST starts a dependency's maintenance, DELETE ends it; both answer 200 with its
    snapshot. A caller gateproxy/core/access.py does not admit gets 403 or 401, is logged
    and counted (`denied`, with the error code), and changes nothing."""

    async def maintenance(request: LocalRequest, name: str, body: bytes) -> Answer:
        """`name`: the dependency's; `body`: the request's, read whole (it is small)."""
        peer = request.peer
        admission = access.admit(peer, request.headers.get("Authorization"),
                                 view.runtime.config.admin_token)
        if admission.refusal is not None:
            log.warning("admin_denied", peer=peer, token=admission.token,
                        code=admission.refusal, method=request.method, dependency=name)
            denied(admission.refusal)
            if admission.refusal == "forbidden":
                return answers.error("forbidden", access.FORBIDDEN_MESSAGE)
            return answers.error("unauthorized", access.UNAUTHORIZED_MESSAGE).with_header(
                "WWW-Authenticate", "Bearer")
        guard = next((g for g in view.runtime.guards if g.status.dep.name == name), None)
        if guard is None or not isinstance(guard.monitor, Maintainable):
            return answers.error("not_found", "no such dependency")
        if request.method == "POST":
            try:
                reason = _reason(body)
            except ValueError as exc:
                return answers.error("bad_request", str(exc))
            guard.monitor.start_maintenance(reason, peer=peer, token=admission.token)
        else:
            guard.monitor.end_maintenance(peer=peer, token=admission.token)
        return answers.json(200, {"name": name, **guard.status.snapshot()})

    return maintenance
