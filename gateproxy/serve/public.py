"""aiohttp's usual path's mechanics: an own answer as a response, a forwarded request
sent and its answer streamed back, and the WebSocket handshake's responses.

What needs the fence's wire format (gateproxy/aio/wire.py: responses without aiohttp's
own headers, HTTP/1.1 status lines) is reached from here, and from
gateproxy/serve/listeners.py only: the rest of the code uses aiohttp's documented API.
"""

from __future__ import annotations

from typing import Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateproxy.aio import wire
from gateproxy.core import answers
from gateproxy.http_rules.actions import ForwardPlan
from gateproxy.http_rules.headers import response_headers
from gateproxy.upstream.interface import UpstreamClient, UpstreamError

respond = wire.own_response
relayed_websocket = wire.relayed_websocket


def handshake_headers(up: aiohttp.ClientWebSocketResponse[Literal[False]]
                      ) -> list[tuple[bytes, bytes]]:
    """The raw headers of the upstream's 101 (none when the fence is down)."""
    return wire.handshake_headers(up)


async def forward(client: UpstreamClient, request: web.BaseRequest,
                  plan: ForwardPlan) -> web.StreamResponse:
    """Send `request` upstream as `plan` says and relay the answer."""
    body = request.content if request.body_exists else None
    try:
        upstream = await client.send(request.method, plan.target, plan.headers, body)
    except UpstreamError as exc:
        return respond(answers.error(exc.code, exc.message, close=plan.close))
    try:
        return await wire.relay(request, upstream, response_headers(upstream.raw_headers),
                                 plan.close)
    finally:
        # After a complete body aiohttp has already pooled the connection and this is a
        # no-op; after a broken or abandoned one it drops the connection.
        upstream.close()


def refusal(status: int, reason: str | None, headers: CIMultiDict[str]) -> web.StreamResponse:
    """The upstream's refusal of a WebSocket handshake, relayed, closing the connection
    (aiohttp's parser treats what follows an upgrade request as the new protocol)."""
    answer = wire.relayed_response(status, reason, headers)
    answer.force_close()
    return answer


__all__ = ["forward", "handshake_headers", "refusal", "relayed_websocket", "respond"]
