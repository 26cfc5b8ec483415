"""aiohttp's usual path: every request the fast path leaves is planned once
(gateproxy/http_rules/plan.py) and the plan carried out here, with public APIs.

A `Hold` is waited out and planned again; an own answer goes through the one writer; an
endpoint is answered by its view; a forward is sent and its answer streamed back; an
upgrade becomes a WebSocket relay. The handler decides nothing itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiohttp import HttpVersion11, hdrs, web

from gateproxy.core import answers
from gateproxy.core.answers import Answer
from gateproxy.http_rules.actions import (
    Action,
    Endpoint,
    ForwardPlan,
    Gated,
    Hold,
    RequestHead,
    Upgrade,
)
from gateproxy.http_rules.plan import Planner
from gateproxy.serve import public
from gateproxy.upstream.interface import UpstreamClient
from gateproxy.views import accesslog

EndpointHandler = Callable[[web.Request], Awaitable[Answer]]
# Where a request keeps its plan between the expect handler and the handler.
_ACTION: web.RequestKey[Action] = web.RequestKey("gateproxy_action", object)  # type: ignore[arg-type]


class Relay(Protocol):
    """The WebSocket relay (gateproxy/serve/websocket.py)."""

    async def relay(self, request: web.BaseRequest, upgrade: Upgrade
                    ) -> web.StreamResponse | Answer: ...


class Counts(Protocol):
    """What the handler counts (gateproxy/views/metrics.py, through the node)."""

    def count_forwarded(self, method: str, status: int, target: str) -> None: ...

    def count_hold(self, dependency: str, outcome: str) -> None: ...


def request_head(request: web.BaseRequest) -> RequestHead:
    """The head the planner reads, from an aiohttp request."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    tls = transport is not None and transport.get_extra_info("sslcontext") is not None
    version = request.version
    return RequestHead(request.method, request.raw_path, (version.major, version.minor),
                       request.headers, request.raw_headers, peer, tls)


class RequestHandler:
    """Plans each request and carries the plan out."""

    def __init__(self, planner: Planner, client: UpstreamClient, websockets: Relay,
                 endpoints: Mapping[str, EndpointHandler], counts: Counts) -> None:
        self._planner = planner
        self._client = client
        self._websockets = websockets
        self._endpoints = endpoints
        self._counts = counts

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The one route's handler."""
        action = await self._action(request)
        if type(action) is Answer:
            return public.respond(action)
        if type(action) is Gated:
            request[accesslog.OUTCOME] = accesslog.GATED
            return public.respond(action.answer)
        if type(action) is Endpoint:
            answer = await self._endpoints[action.name](request)
            return public.respond(answer.closing() if action.close else answer)
        request[accesslog.OUTCOME] = accesslog.FORWARDED
        if type(action) is Upgrade:
            # Not a forwarded request in the metrics: a session usually ends with the
            # client hanging up, which cancels this handler (the gauge counts sessions).
            relayed = await self._websockets.relay(request, action)
            return public.respond(relayed) if isinstance(relayed, Answer) else relayed
        assert type(action) is ForwardPlan
        response = await public.forward(self._client, request, action)
        self._counts.count_forwarded(request.method, response.status, action.target)
        return response

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """Answer a request with `Expect` before the client sends its body: the proxy's
        own answer (closing: the unsent body must not be read as the next request), or
        `100 Continue`."""
        action = await self._action(request)
        own = action.answer if type(action) is Gated else action
        if type(own) is Answer:
            if type(action) is Gated:
                request[accesslog.OUTCOME] = accesslog.GATED
            return public.respond(own.closing())
        expect = request.headers.get(hdrs.EXPECT, "")
        if request.version == HttpVersion11 and expect.lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        if request.version == HttpVersion11:
            return public.respond(answers.error("expectation_failed",
                                                "only 100-continue is understood"))
        return None

    @web.middleware
    async def unrouted(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        """A target the one route cannot match (`*`: routes start with `/`) goes to the
        same handler, not to aiohttp's own 404."""
        if request.match_info.http_exception is not None:
            return await self.handle(request)
        return await handler(request)

    async def _action(self, request: web.BaseRequest) -> Action:
        """The plan, after the wait it may ask for; made once per request."""
        action = request.get(_ACTION)
        if action is None:
            head = request_head(request)
            action = self._planner.plan(head)
            if type(action) is Hold:
                action = await self._hold(head, action)
            request[_ACTION] = action
        return action

    async def _hold(self, head: RequestHead, hold: Hold) -> Action:
        """Wait as the plan says, then plan again: a first probe's answer is worth a
        short wait; a held request waits up to hold_ms for its dependency to come back."""
        if not hold.hold:
            await hold.watch.wait_change(hold.timeout_s)
            return self._planner.plan(head, waited=True)
        try:
            held = await hold.watch.hold(hold.timeout_s, hold.limit)
        except asyncio.CancelledError:  # the client went away: its slot is free again
            self._counts.count_hold(hold.dependency, "cancelled")
            raise
        action = self._planner.plan(head, waited=True)
        if held:
            self._counts.count_hold(hold.dependency, "timed_out" if type(action) is Gated
                                    else "forwarded")
        return action
