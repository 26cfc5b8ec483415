"""The client that talks to the upstream, behind a small interface of its own.

The proxy only sees `UpstreamClient.send()` and `UpstreamResponse`; aiohttp's
ClientSession is one implementation and can be replaced by a leaner HTTP/1.1 client
without touching the gate or the proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol, runtime_checkable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

RawHeaders = tuple[tuple[bytes, bytes], ...]


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # "upstream_unavailable" or "upstream_timeout"
        self.message = message


class HandshakeRefused(Exception):
    """The upstream answered a WebSocket handshake with something other than 101."""

    def __init__(self, status: int, reason: str, headers: RawHeaders) -> None:
        super().__init__(f"the upstream refused the WebSocket handshake with {status}")
        self.status = status
        self.reason = reason
        self.raw_headers = headers


UpstreamWebSocket = aiohttp.ClientWebSocketResponse[Literal[False]]


class UpstreamResponse(Protocol):
    status: int
    reason: str
    raw_headers: RawHeaders

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as the upstream sends it; raises UpstreamError when it breaks."""
        ...

    def release(self) -> None:
        """Done with a fully read body: the connection may be reused."""

    def close(self) -> None:
        """Abandon the body: the connection is dropped."""


class UpstreamClient(Protocol):
    async def send(self, method: str, target: str, headers: CIMultiDict[str],
                   body: aiohttp.StreamReader | None) -> UpstreamResponse: ...

    async def close(self) -> None: ...


@runtime_checkable
class WebSocketUpstream(Protocol):
    """An upstream client that can also open WebSockets (a separate interface, so that
    wrappers of UpstreamClient need not implement it)."""

    async def open_websocket(self, target: str, headers: CIMultiDict[str],
                             protocols: tuple[str, ...], compress: bool,
                             max_msg_size: int) -> UpstreamWebSocket:
        """Open a WebSocket upstream; raises HandshakeRefused or UpstreamError."""
        ...


class _AiohttpResponse:
    __slots__ = ("_resp", "raw_headers", "reason", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.reason = resp.reason or ""
        self.raw_headers = resp.raw_headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise UpstreamError("upstream_timeout", "the upstream stalled mid-response") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError("upstream_unavailable", f"the upstream broke off: {exc}") from exc

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()


# An open WebSocket has no read deadline (idle terminals are normal); closing handshakes
# get a few seconds before the connection is dropped.
_WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)


def _failure(exc: BaseException, read_timeout_ms: int) -> UpstreamError:
    """What a failed connect or a missing answer means to the client: 502 or 504."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamError("upstream_unavailable",
                             "the upstream did not accept a connection in time")
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError("upstream_timeout",
                             f"no response from the upstream within {read_timeout_ms} ms")
    return UpstreamError("upstream_unavailable", f"the upstream is unavailable: {exc}")


class AiohttpUpstream:
    """One pooled keep-alive ClientSession; never follows redirects, never decompresses,
    never stores cookies, adds no headers of its own."""

    def __init__(self, base_url: str, connect_timeout_ms: int, read_timeout_ms: int) -> None:
        self._base = base_url.rstrip("/")
        self._read_timeout_ms = read_timeout_ms
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=10),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=connect_timeout_ms / 1000,
                sock_read=read_timeout_ms / 1000 if read_timeout_ms else None,
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            requote_redirect_url=False,
        )

    async def send(self, method: str, target: str, headers: CIMultiDict[str],
                   body: aiohttp.StreamReader | None) -> UpstreamResponse:
        url = URL(self._base + target, encoded=True)
        try:
            resp = await self._session.request(
                method, url, headers=headers, data=body, allow_redirects=False,
                compress=None, chunked=None,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _failure(exc, self._read_timeout_ms) from exc
        return _AiohttpResponse(resp)

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
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _failure(exc, self._read_timeout_ms) from exc

    async def close(self) -> None:
        await self._session.close()
