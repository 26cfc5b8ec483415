"""The admin endpoints as an application of their own (the admin port, and the
supervisor's socket that its workers relay to): each view's answer written by the one
writer, and aiohttp's refusals (no such path, another method, a body over the limit)
as the proxy's own JSON errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateproxy.core import answers
from gateproxy.serve import public
from gateproxy.views import admin


def _written(handler: admin.Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def route(request: web.Request) -> web.StreamResponse:
        return public.respond(await handler(request))

    return route


@web.middleware
async def own_refusals(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """aiohttp's refusals as the proxy's own errors; `OPTIONS *`, which no route can
    match, answered."""
    if request.method == "OPTIONS" and request.raw_path == "*":
        return public.respond(answers.server_options(answers.ADMIN_ALLOW))
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return public.respond(answers.refusal(exc.status, exc.headers.get("Allow")))


def application(view: admin.View, denied: Callable[[str], None] | None) -> web.Application:
    """The admin endpoints, with the maintenance endpoint, which changes state, when
    `denied` (what counts a refused caller) is given."""
    app = web.Application(middlewares=[own_refusals])
    prefix = view.runtime.config.admin_prefix
    for name, handler in admin.endpoints(app, view).items():
        app.router.add_get(f"{prefix}/{name}", _written(handler))
    if denied is not None:
        control = _written(admin.maintenance_endpoint(view, denied))
        app.router.add_route("POST", admin.MAINTENANCE.format(prefix=prefix), control)
        app.router.add_route("DELETE", admin.MAINTENANCE.format(prefix=prefix), control)
    return app
