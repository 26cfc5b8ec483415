"""Stand-ins for the platform-server and docker-runner, for the demo and the tests.

Real aiohttp servers on loopback with the routes the real services have (see the
reference), small enough to read at a glance.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Protocol

from aiohttp import WSMsgType, web

FLIP_PATH = "/demo/docker-runner"


class Switchable(Protocol):
    """A stand-in the demo starts and stops: StandIn here, GrpcRunner (grpcstandin)."""

    port: int
    changed_at: float

    @property
    def url(self) -> str: ...

    @property
    def running(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def flip(self) -> None: ...


class StandIn:
    """An aiohttp application that can be started and stopped on a fixed port."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.changed_at = time.monotonic()  # when it last started or stopped
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                               shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        for address in runner.addresses:
            self.port = int(address[1])
        self._runner = runner
        self.changed_at = time.monotonic()

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            self.changed_at = time.monotonic()
            await runner.cleanup()

    async def flip(self) -> None:
        await (self.stop() if self.running else self.start())


def docker_runner() -> web.Application:
    """docker-runner's unauthenticated readiness and liveness endpoints."""

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/v1/ready", ready)
    app.router.add_get("/v1/health", healthz)
    return app


DEMO_PAGE = """<!doctype html><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>stand-in platform-server</title>
<style>body{font:16px/1.45 system-ui,sans-serif;margin:1.5em auto;padding:0 1em;max-width:40em}
button{font-size:1.1em;padding:.5em 1em}</style>
<h1>stand-in platform-server</h1>
<p>This page is served by the demo's stand-in platform-server, through gateproxy.
The stand-in docker-runner is <b id="state">%(state)s</b> (the demo also flips it on a
timer).</p>
<form method="post" action="%(flip)s"><button>%(action)s docker-runner</button></form>
<p>Watch <a href="/_gateproxy/status" target="_blank">gateproxy's status page</a> while you
flip it, and try <a href="/api/containers">/api/containers</a> (gated),
<a href="/api/threads">/api/threads</a> (always forwarded) and
<a href="/health">/health</a>.</p>
"""


def platform_server(runner: Switchable | None = None) -> web.Application:
    """A few platform-server routes: gated ones under /api/containers, others not."""
    ids = itertools.count(1)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "timestamp": time.time(),
                                  "dependencies": {"postgres": {"status": "up"}}})

    async def containers(_: web.Request) -> web.Response:
        if runner is not None and not runner.running:
            # What the platform-server answers when its call to docker-runner fails.
            return web.json_response({"error": "docker-runner unavailable"}, status=503)
        return web.json_response({"items": [{"id": "c1", "status": "running"}]})

    async def container_events(request: web.Request) -> web.Response:
        return web.json_response({"containerId": request.match_info["id"], "items": []})

    async def delete_container(_: web.Request) -> web.Response:
        return web.Response(status=204)

    async def terminal_session(request: web.Request) -> web.Response:
        return web.json_response({"sessionId": f"s{next(ids)}", "token": "t",
                                  "workspaceId": request.match_info["id"]}, status=201)

    async def threads(_: web.Request) -> web.Response:
        return web.json_response({"items": [{"id": "t1", "title": "hello"}]})

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for n in range(int(request.query.get("count", "30"))):
            await resp.write(f"id: {n}\nevent: tick\ndata: {{\"n\": {n}}}\n\n".encode())
            await asyncio.sleep(float(request.query.get("interval", "1")))
        await resp.write_eof()
        return resp

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("echo",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def page(_: web.Request) -> web.Response:
        up = runner is not None and runner.running
        return web.Response(
            text=DEMO_PAGE % {"state": "up" if up else "down", "flip": FLIP_PATH,
                              "action": "Stop" if up else "Start"},
            content_type="text/html", headers={"Cache-Control": "no-store"})

    async def flip(_: web.Request) -> web.Response:
        if runner is not None:
            await runner.flip()
        raise web.HTTPSeeOther("/demo")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/api/containers", containers)
    app.router.add_get("/api/containers/{id}/events", container_events)
    app.router.add_delete("/api/containers/{id}", delete_container)
    app.router.add_post("/api/containers/{id}/terminal/sessions", terminal_session)
    app.router.add_get("/api/threads", threads)
    app.router.add_get("/api/events/sse", events)
    app.router.add_get("/api/echo/ws", echo)
    app.router.add_get("/demo", page)
    app.router.add_post(FLIP_PATH, flip)
    return app
