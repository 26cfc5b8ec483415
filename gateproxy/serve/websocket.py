"""WebSocket relay: the upstream handshake first, then both directions frame by frame.

The upstream is asked before the client gets any answer, so that a refusal reaches the
client as the upstream's own HTTP status instead of a 101 followed by a close. Each
direction awaits its send before it reads the next message, so a slow reader holds back
its writer through TCP instead of making the proxy buffer (aiohttp stops reading a
socket whose queue is full). Pings and pongs are relayed, not answered: the two ends
keep measuring each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Literal, NamedTuple

from aiohttp import WSMsgType, hdrs, web
from multidict import CIMultiDict

from gateproxy.core import answers
from gateproxy.core.answers import Answer
from gateproxy.http_rules.actions import Upgrade
from gateproxy.http_rules.headers import HOP_BY_HOP, add_via, header_text, response_headers
from gateproxy.http_rules.plan import HANDSHAKE
from gateproxy.serve import public
from gateproxy.upstream.interface import (
    HandshakeRefused,
    UpstreamError,
    UpstreamWebSocket,
    WebSocketUpstream,
)

# The platform-server's terminals and Socket.IO send small messages; this bounds what
# one message can make the proxy hold (aiohttp reassembles fragmented messages).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
CLOSE_TIMEOUT = 5.0
GOING_AWAY = 1001
INTERNAL_ERROR = 1011
NORMAL = 1000
# Codes a Close frame may carry (RFC 6455 section 7.4); the rest (1005, 1006, 1015:
# "no status", "abnormal", "TLS failure") only ever describe a closure locally.
_WIRE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})
_PACK_CLOSE_CODE = struct.Struct("!H").pack
# Headers of the upstream's 101 that aiohttp's own handshake sets (order kept).
_HANDSHAKE_REPLY = frozenset({"upgrade", "connection", "sec-websocket-accept",
                              "sec-websocket-protocol", "sec-websocket-extensions"})
# A refusal's body is gone (aiohttp drops it), so headers that describe it go too.
_REFUSAL_DROP = frozenset({"content-length", "content-type", "content-encoding"})

ClientSide = web.WebSocketResponse[Literal[False]]
Socket = ClientSide | UpstreamWebSocket


def wire_code(code: int | None) -> int:
    """A close code that may be sent on the wire for one that was received or seen."""
    if code == 0:
        # aiohttp's reading of an empty Close frame, which is what a browser's plain
        # `ws.close()` sends: a normal closure, not a failure.
        return NORMAL
    if code is None or code not in _WIRE_CODES:
        return INTERNAL_ERROR
    return code


class _End(NamedTuple):
    """How one direction stopped."""

    code: int | None  # the Close code the source sent; None: it did not send one
    reason: bytes
    target_gone: bool  # the destination refused a frame


class _Session:
    __slots__ = ("finished", "going_away", "task", "transport", "up", "ws")

    def __init__(self, ws: ClientSide, up: UpstreamWebSocket,
                 transport: asyncio.Transport) -> None:
        self.ws = ws
        self.up = up
        self.transport = transport
        self.going_away = False
        self.finished = asyncio.Event()
        self.task: asyncio.Future[None] | None = None

    async def run(self) -> None:
        ws, up = self.ws, self.up
        pumps: dict[asyncio.Future[_End], tuple[Socket, Socket]] = {
            asyncio.ensure_future(_pump(ws, up)): (ws, up),
            asyncio.ensure_future(_pump(up, ws)): (up, ws),
        }
        try:
            done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done))
            src, dst = pumps[first]
            end = first.result()
            if end.code is not None and src is up:
                await self._relay_upstream_close(end, pending)
            elif end.code is not None:
                # The client began the closing handshake: begin it upstream, then give
                # the client the upstream's answer as the reply.
                await up.close(code=wire_code(end.code), message=end.reason)
                await _settle(pending)
                await ws.close(code=wire_code(up.close_code))
            else:
                broken, survivor = (dst, src) if end.target_gone else (src, dst)
                code = GOING_AWAY if self.going_away else wire_code(broken.close_code)
                await survivor.close(code=code)
                await _settle(pending)
                await broken.close(code=code)
        finally:
            for pump in pumps:
                pump.cancel()
            if not up.closed:
                # Cancelled (the client vanished, or the grace time ran out): the
                # upstream connection must not outlive the session.
                await up.close(code=GOING_AWAY if self.going_away else INTERNAL_ERROR)
            self.finished.set()

    async def _relay_upstream_close(self, end: _End,
                                    pending: set[asyncio.Future[_End]]) -> None:
        """The upstream began the closing handshake. Its Close goes to the client as a
        plain frame, so that the client's reply is read by the relay (aiohttp's own
        close() would drop the connection without reading it) and goes back upstream."""
        code = wire_code(end.code)
        with contextlib.suppress(ConnectionError):
            await self.ws.send_frame(_PACK_CLOSE_CODE(code) + end.reason, WSMsgType.CLOSE)
        reply = None
        if pending:
            done, _ = await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
            if done:
                reply = next(iter(done)).result().code
        await self.up.close(code=wire_code(reply if reply is not None else code))
        # Both Close frames have crossed: only the TCP connection is left to close.
        self.transport.close()

    async def go_away(self) -> None:
        """Close both ends with 1001 (the proxy is shutting down)."""
        self.going_away = True
        with contextlib.suppress(Exception):
            # The pump reading the client returns, and run() closes the upstream.
            await self.ws.close(code=GOING_AWAY, message=b"proxy shutting down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), CLOSE_TIMEOUT)


async def _pump(src: Socket, dst: Socket) -> _End:
    receive = src.receive
    while True:
        msg = await receive()
        kind = msg.type
        try:
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                await dst.send_frame(msg.data, kind)
            elif kind is WSMsgType.PING:
                await dst.ping(msg.data)
            elif kind is WSMsgType.PONG:
                await dst.pong(msg.data)
            elif kind is WSMsgType.CLOSE:
                reason = msg.extra or ""
                return _End(msg.data, reason.encode(), False)
            else:
                # CLOSING: the proxy closes src itself; CLOSED, ERROR: src broke off
                # (aiohttp has already told src why, when it could).
                return _End(None, b"", False)
        except ConnectionError:
            return _End(None, b"", True)


async def _settle(pending: set[asyncio.Future[_End]]) -> None:
    """Let the other direction finish what it is sending, within the close timeout."""
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)


class WebSocketRelay:
    """Relays WebSocket sessions to the upstream and keeps count of the open ones."""

    def __init__(self, client: object, max_msg_size: int = MAX_MESSAGE_SIZE) -> None:
        # Optional: an UpstreamClient that cannot open WebSockets gets a 502 per upgrade.
        self._client = client if isinstance(client, WebSocketUpstream) else None
        self._max_msg_size = max_msg_size
        self._sessions: set[_Session] = set()

    @property
    def open_count(self) -> int:
        """WebSocket sessions being relayed right now."""
        return len(self._sessions)

    async def relay(self, request: web.BaseRequest, upgrade: Upgrade
                    ) -> web.StreamResponse | Answer:
        """Relay the session `upgrade` plans, or the answer that refuses it."""
        client = self._client
        if client is None:
            return answers.error("upstream_unavailable",
                                 "the upstream client cannot relay WebSockets", close=True)
        max_size = self._max_msg_size
        headers = request.headers
        offered = tuple(p.strip() for value in headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
                        for p in value.split(",") if p.strip())
        if not web.WebSocketResponse(protocols=offered).can_prepare(request).ok:
            return answers.error("bad_request", "invalid WebSocket handshake", close=True)
        deflate = any("permessage-deflate" in value.lower()
                      for value in headers.getall(hdrs.SEC_WEBSOCKET_EXTENSIONS, ()))
        try:
            up = await client.open_websocket(upgrade.target, upgrade.headers, offered,
                                             deflate, max_size)
        except HandshakeRefused as exc:
            return _refusal(exc)
        except UpstreamError as exc:
            return answers.error(exc.code, exc.message, close=True)
        try:
            ws = public.relayed_websocket(
                protocols=(up.protocol,) if up.protocol else (), compress=bool(up.compress),
                autoclose=False, autoping=False, max_msg_size=max_size, decode_text=False,
                timeout=CLOSE_TIMEOUT)
            _copy_handshake_headers(up, ws.headers)
            await ws.prepare(request)
        except BaseException:
            await up.close(code=GOING_AWAY)
            raise
        transport = request.transport
        if transport is None:  # the client left during the handshake
            await up.close(code=GOING_AWAY)
            return ws
        session = _Session(ws, up, transport)
        sessions = self._sessions
        sessions.add(session)
        # A task of its own: aiohttp cancels the handler as soon as the client's
        # connection closes, which is also the last step of a closing handshake the
        # session still has to finish with the upstream.
        session.task = asyncio.ensure_future(session.run())
        session.task.add_done_callback(lambda _: sessions.discard(session))
        await asyncio.shield(session.task)
        return ws

    async def close_all(self) -> None:
        """Close every relayed session with 1001 and wait (briefly) until they end."""
        sessions = list(self._sessions)
        if sessions:
            await asyncio.gather(*(s.go_away() for s in sessions))

    async def on_shutdown(self, _: web.Application) -> None:
        """aiohttp's on_shutdown hook: runs after the listener closes and before the
        grace time for in-flight requests, which WebSockets would otherwise use up."""
        await self.close_all()


def _copy_handshake_headers(up: UpstreamWebSocket, into: CIMultiDict[str]) -> None:
    """The upstream's 101 headers (Set-Cookie, Server, Date...) for the client's 101,
    in the upstream's order."""
    for raw_name, raw_value in public.handshake_headers(up):
        name = header_text(raw_name)
        lowered = name.lower()
        if lowered in _HANDSHAKE_REPLY:
            if name not in into:
                into.add(name, "")  # its place; aiohttp's handshake writes the value
        elif lowered not in HOP_BY_HOP and lowered != "content-length":
            into.add(name, header_text(raw_value))
    add_via(into)


def _refusal(refused: HandshakeRefused) -> web.StreamResponse:
    headers = response_headers(refused.raw_headers, _REFUSAL_DROP | HANDSHAKE)
    headers[hdrs.CONTENT_LENGTH] = "0"
    return public.refusal(refused.status, refused.reason or None, headers)


__all__ = ["MAX_MESSAGE_SIZE", "WebSocketRelay", "wire_code"]
