"""aiohttp's ClientSession behind the upstream client interface (gateproxy/upstream/interface.py).

The client with `fast_path: false`; with `fast_path: true` the lean FastUpstream
(gateproxy/aio/client.py) forwards requests and hands WebSocket handshakes to this one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateproxy.upstream.interface import (
    FAILURES,
    HandshakeRefused,
    UpstreamResponse,
    UpstreamWebSocket,
    failure,
)


class _AiohttpResponse:
    __slots__ = ("_read_timeout_ms", "_resp", "raw_headers", "reason", "status")

    def __init__(self, resp: aiohttp.ClientResponse, read_timeout_ms: int) -> None:
        self._resp = resp
        self._read_timeout_ms = read_timeout_ms
        self.status = resp.status
        self.reason = resp.reason or ""
        self.raw_headers = resp.raw_headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except FAILURES as exc:
            raise failure(exc, self._read_timeout_ms, mid_body=True) from exc

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()


# An open WebSocket has no read deadline (idle terminals are normal); closing handshakes
# get a few seconds before the connection is dropped.
_WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)


class AiohttpUpstream:
    """One pooled keep-alive ClientSession, made on first use (a FastUpstream keeps one
    for WebSockets only); never follows redirects, never decompresses, never stores
    cookies, adds no headers of its own."""

    def __init__(self, base_url: str, connect_timeout_ms: int, read_timeout_ms: int, *,
                 connector: Callable[..., aiohttp.TCPConnector] = aiohttp.TCPConnector
                 ) -> None:
        """`connector`: makes the session's connector (the proxy's makes its connections
        through the connect step, gateproxy/aio/connector.py)."""
        self._base = base_url.rstrip("/")
        self._connector = connector
        self._connect_timeout_ms = connect_timeout_ms
        self._read_timeout_ms = read_timeout_ms
        self._made: aiohttp.ClientSession | None = None

    @property
    def _session(self) -> aiohttp.ClientSession:
        if self._made is None:
            read_timeout_ms = self._read_timeout_ms
            self._made = aiohttp.ClientSession(
                connector=self._connector(limit=0, ttl_dns_cache=10),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self._connect_timeout_ms / 1000,
                    sock_read=read_timeout_ms / 1000 if read_timeout_ms else None,
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                requote_redirect_url=False,
            )
        return self._made

    async def send(self, method: str, target: str, headers: CIMultiDict[str],
                   body: aiohttp.StreamReader | None) -> UpstreamResponse:
        url = URL(self._base + target, encoded=True)
        try:
            resp = await self._session.request(
                method, url, headers=headers, data=body, allow_redirects=False,
                compress=None, chunked=None,
            )
        except FAILURES as exc:
            raise failure(exc, self._read_timeout_ms) from exc
        return _AiohttpResponse(resp, self._read_timeout_ms)

    async def open_websocket(self, target: str, headers: CIMultiDict[str],
                             protocols: tuple[str, ...], compress: bool,
                             max_msg_size: int) -> UpstreamWebSocket:
        url = URL(self._base + target, encoded=True)
        try:
            return await self._session.ws_connect(
                url, protocols=protocols, headers=headers, autoclose=False,
                autoping=False, compress=15 if compress else 0, max_msg_size=max_msg_size,
                decode_text=False, timeout=_WS_TIMEOUT,
            )
        except aiohttp.WSServerHandshakeError as exc:
            # aiohttp has already dropped the refusal's body; status and headers remain.
            # aiohttp decoded them as UTF-8 with surrogateescape: this is the inverse.
            raw = tuple((k.encode("utf-8", "surrogateescape"),
                         v.encode("utf-8", "surrogateescape"))
                        for k, v in (exc.headers or {}).items())
            # The reason phrase is gone as well: aiohttp's message is its own.
            raise HandshakeRefused(exc.status, "", raw) from exc
        except FAILURES as exc:
            raise failure(exc, self._read_timeout_ms) from exc

    async def close(self) -> None:
        if self._made is not None:
            await self._made.close()
