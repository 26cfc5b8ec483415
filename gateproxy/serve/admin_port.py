"""The admin endpoints as an aiohttp application of their own (the admin port, and the
supervisor's socket that its workers relay to): each view's answer written as the
proxy's own answer, and aiohttp's refusals (no such path, another method, a body over
the limit) as the proxy's own JSON errors. Only aiohttp's public API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateproxy.core import answers
from gateproxy.core.answers import SERVER, Answer
from gateproxy.http_rules.actions import EndpointHandler, LocalRequest
from gateproxy.serve.listeners import StartupError
from gateproxy.views import accesslog, admin


def respond(answer: Answer) -> web.Response:
    """An answer of the proxy's own as an aiohttp response: `Server: gateproxy` (which
    keeps aiohttp's own out), nothing else of aiohttp's."""
    response = web.Response(status=answer.status, body=answer.body,
                            headers=[*answer.headers, ("Server", SERVER)])
    if answer.close:
        response.force_close()
    return response


def local(request: web.BaseRequest) -> LocalRequest:
    """What an endpoint reads of an aiohttp request."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return LocalRequest(request.method, request.raw_path, request.headers,
                        str(peer[0]) if isinstance(peer, tuple) and peer else None)


def _written(handler: EndpointHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def route(request: web.Request) -> web.StreamResponse:
        return respond(await handler(local(request)))

    return route


@web.middleware
async def own_refusals(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """aiohttp's refusals as the proxy's own errors; `OPTIONS *`, which no route can
    match, answered."""
    if request.method == "OPTIONS" and request.raw_path == "*":
        return respond(answers.server_options(answers.ADMIN_ALLOW))
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return respond(answers.refusal(exc.status, exc.headers.get("Allow")))


def application(view: admin.View, denied: Callable[[str], None] | None) -> web.Application:
    """The admin endpoints, with the maintenance endpoint, which changes state, when
    `denied` (what counts a refused caller) is given."""
    app = web.Application(middlewares=[own_refusals])
    prefix = view.runtime.config.admin_prefix
    for name, handler in admin.endpoints(view).items():
        app.router.add_get(f"{prefix}/{name}", _written(handler))
    if denied is not None:
        control = admin.maintenance_endpoint(view, denied)

        async def maintenance(request: web.Request) -> web.StreamResponse:
            return respond(await control(local(request), request.match_info["name"],
                                         await request.read()))

        app.router.add_route("POST", admin.MAINTENANCE.format(prefix=prefix), maintenance)
        app.router.add_route("DELETE", admin.MAINTENANCE.format(prefix=prefix), maintenance)
    return app


class AdminSite:
    """An admin application served on a TCP port."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()


async def listen(app: web.Application, host: str, port: int, view: admin.View) -> AdminSite:
    """Serve `app` on host:port (the access log as the live configuration says).
    Raises StartupError when the port cannot be had."""
    runner = web.AppRunner(app, handle_signals=False,
                           **accesslog.runner_options(lambda: view.runtime.config.log.access))
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound = next(int(a[1]) for a in runner.addresses if isinstance(a, tuple))
    return AdminSite(runner, bound)


async def serve(view: admin.View, host: str, port: int,
                denied: Callable[[str], None]) -> AdminSite:
    """The admin port: the endpoints and maintenance."""
    return await listen(application(view, denied), host, port, view)
