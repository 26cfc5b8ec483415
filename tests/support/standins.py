"""Stand-in servers in the test process: a platform-server that records what reaches it,
and the signature of the `start_standin` fixture (tests/conftest.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateproxy.demo.standins import StandIn, platform_server

# start_standin(app, port=0): the app served on loopback, stopped after the test.
StartStandIn = Callable[[web.Application], Awaitable[StandIn]]


class Recorder:
    """A platform-server stand-in that records every request it receives."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.app = platform_server()
        self.app.middlewares.append(self._record)

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path))
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except web.HTTPNotFound:
            return web.json_response({"echo": request.raw_path}, status=200)


class BodyRecorder:
    """A platform-server stand-in that answers every request 200 `{"ok": true}` after
    reading its body, and records what arrived: method, path, body length and SHA-256."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int, str]] = []
        self.app = web.Application(client_max_size=1 << 30)
        self.app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.raw_path, len(body),
                          hashlib.sha256(body).hexdigest()))
        return web.json_response({"ok": True})
