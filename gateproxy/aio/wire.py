"""The fence's wire format: responses that carry the upstream's headers and nothing
aiohttp invents (a relayed answer streamed to the client with `relay`), the proxy's own
answers with an HTTP/1.1 status line, and response heads serialised as aiohttp does.

aiohttp's server adds a `Server` naming itself and an `application/octet-stream`
Content-Type to every response, and offers no public way to leave them out; a relay that
must not add them overrides `_prepare_headers`. When the names this needs are missing
(`FAITHFUL` is False), the same functions fall back on public APIs: the relayed answer
then carries `Server: gateproxy` where the upstream sent none.
"""

from __future__ import annotations

from typing import Final, Literal

import aiohttp
from aiohttp import HttpVersion11, hdrs, http_writer, web
from multidict import CIMultiDict

from gateproxy.aio.needs import Need, missing
from gateproxy.http_rules.actions import SERVER, Answer, UpstreamError, UpstreamResponse

REQUIRES: Final = (
    Need(web.StreamResponse, "__init__", param="_real_headers"),
    Need(web.StreamResponse, "_prepare_headers", call=True),
    Need(web.StreamResponse, "_headers"),
    Need(web.StreamResponse, "_payload_writer"),
    Need(web.StreamResponse, "_write_headers", call=True),
    Need(web.StreamResponse, "_req"),
    Need(web.StreamResponse, "_send_headers_immediately"),
    Need(http_writer.StreamWriter, "write_headers", param="status_line"),
    Need(web.WebSocketResponse, "_prepare_headers", call=True),
    Need(http_writer.StreamWriter, "chunked"),
    Need(aiohttp.ClientWebSocketResponse, "_response"),
)
MISSING: Final = missing(REQUIRES)
FAITHFUL: Final = MISSING is None


def _strip_defaults(headers: CIMultiDict[str], had_server: bool, had_type: bool) -> None:
    """Undo what aiohttp's server adds on its own. (`Date` stays: RFC 9110 section 6.6.1
    asks a forwarding recipient to add one when it is missing.)"""
    if not had_server:
        headers.popall(hdrs.SERVER, None)
    if not had_type:
        headers.popall(hdrs.CONTENT_TYPE, None)


class _Http11(web.StreamResponse):
    """A response whose status line says HTTP/1.1 whatever the client's version (RFC 9110
    section 2.5: the highest version the server conforms to), not the request's as
    aiohttp writes it (`HTTP/0.9 505`)."""

    async def _write_headers(self) -> None:
        request, writer = self._req, self._payload_writer
        assert request is not None and writer is not None
        if request.version != HttpVersion11 and not self.keep_alive:
            # An HTTP/1.1 answer without it would say the connection stays open.
            self._headers[hdrs.CONNECTION] = "close"
        await writer.write_headers(f"HTTP/1.1 {self.status} {self.reason}", self._headers)
        if self._send_headers_immediately:
            writer.send_headers()


class _RelayedResponse(_Http11):
    async def _prepare_headers(self) -> None:
        headers = self._headers
        had_server = hdrs.SERVER in headers
        had_type = hdrs.CONTENT_TYPE in headers
        placeholder = hdrs.TRANSFER_ENCODING in headers
        await super()._prepare_headers()
        if not (had_server and had_type):
            _strip_defaults(headers, had_server, had_type)
        if placeholder:
            writer = self._payload_writer
            if writer is None or not writer.chunked:  # type: ignore[attr-defined]
                headers.popall(hdrs.TRANSFER_ENCODING, None)


def relayed_response(status: int, reason: str | None,
                     headers: CIMultiDict[str]) -> web.StreamResponse:
    """A response with exactly `headers` (a `Transfer-Encoding` among them only marks
    where aiohttp's own framing header goes)."""
    if FAITHFUL:
        return _RelayedResponse(status=status, reason=reason, _real_headers=headers)
    headers.popall(hdrs.TRANSFER_ENCODING, None)
    headers.setdefault(hdrs.SERVER, SERVER)
    return web.StreamResponse(status=status, reason=reason, headers=headers)


class _OwnResponse(_Http11, web.Response):
    pass


def own_response(answer: Answer) -> web.Response:
    """An answer of the proxy's own as an aiohttp response: HTTP/1.1 whatever the
    client's version, `Server: gateproxy`, nothing else of aiohttp's."""
    headers = [*answer.headers, (hdrs.SERVER, SERVER)]
    response = (_OwnResponse if FAITHFUL else web.Response)(
        status=answer.status, body=answer.body, headers=headers)
    if answer.close:
        response.force_close()
    return response


class _RelayedWebSocket(web.WebSocketResponse[Literal[False]]):
    async def _prepare_headers(self) -> None:
        headers = self._headers
        # Placeholders keep the upstream's header order; aiohttp's handshake fills in
        # the ones it negotiated, those it did not must not go out empty.
        for name in ("Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"):
            if headers.get(name) == "":
                del headers[name]
        had_server = hdrs.SERVER in headers
        await super()._prepare_headers()
        _strip_defaults(headers, had_server, True)


def relayed_websocket(**options: object) -> web.WebSocketResponse[Literal[False]]:
    """The client side of a relayed WebSocket: its 101 carries the headers put on it
    (see `handshake_headers`), and no `Server` the upstream did not send."""
    if FAITHFUL:
        return _RelayedWebSocket(**options)  # type: ignore[arg-type]
    return web.WebSocketResponse(**options)  # type: ignore[arg-type]


def handshake_headers(up: aiohttp.ClientWebSocketResponse[Literal[False]]
                      ) -> list[tuple[bytes, bytes]]:
    """The raw headers of the upstream's 101, which aiohttp keeps only on a private
    attribute; none when the fence is down."""
    response = getattr(up, "_response", None) if FAITHFUL else None
    if not isinstance(response, aiohttp.ClientResponse):
        return []
    return list(response.raw_headers)


async def relay(request: web.BaseRequest, upstream: UpstreamResponse,
                headers: CIMultiDict[str], close: bool = False) -> web.StreamResponse:
    """Stream `upstream` to the client with `headers` (`close`: with `Connection:
    close`, and the connection ends after it)."""
    resp = relayed_response(upstream.status, upstream.reason, headers)
    if close:
        resp.force_close()
    try:
        await resp.prepare(request)
        async for chunk in upstream.iter_chunks():
            await resp.write(chunk)
        await resp.write_eof()
    except UpstreamError:
        # The status line is out: the only honest signal left is an unclean end,
        # never a terminating chunk that would make a cut body look complete.
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        pass  # the client went away; closing the upstream response is all there is
    return resp
