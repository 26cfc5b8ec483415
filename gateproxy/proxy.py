"""Forwarding: one request to the upstream and its answer back, streamed both ways.

Headers change only as the README documents: hop-by-hop headers (and those named in
`Connection`) are dropped both ways, `X-Forwarded-*` and `Via` are added. Bodies are
never buffered, decompressed or re-encoded.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from multidict import CIMultiDict

from gateproxy.gate import JSON, error_body
from gateproxy.upstream import RawHeaders, UpstreamClient, UpstreamError, UpstreamResponse

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authorization", "proxy-authenticate",
    # aiohttp has already answered `Expect: 100-continue` for the client.
    "expect",
})
VIA = "1.1 gateproxy"


def _dropped(connection: str | None) -> frozenset[str]:
    if not connection:
        return HOP_BY_HOP
    return HOP_BY_HOP | {t.strip().lower() for t in connection.split(",")}


def request_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    """The headers to send upstream. Hop-by-hop ones go first, so that a client cannot
    remove our X-Forwarded-* by naming them in `Connection`."""
    drop = _dropped(request.headers.get(hdrs.CONNECTION))
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.raw_headers:
        key = name.decode("latin-1")
        if key.lower() not in drop:
            out.add(key, value.decode("latin-1"))
    peer = request.remote or ""
    previous = out.getall("X-Forwarded-For", None)
    if previous:
        del out["X-Forwarded-For"]
        out["X-Forwarded-For"] = ", ".join((*previous, peer))
    else:
        out["X-Forwarded-For"] = peer
    if "X-Forwarded-Proto" not in out:
        out["X-Forwarded-Proto"] = "https" if request.transport and \
            request.transport.get_extra_info("sslcontext") else "http"
    if "X-Forwarded-Host" not in out and "Host" in out:
        out["X-Forwarded-Host"] = out["Host"]
    _add_via(out)
    return out


def response_headers(raw: RawHeaders) -> CIMultiDict[str]:
    connection = None
    for name, value in raw:
        if name.lower() == b"connection":
            connection = value.decode("latin-1")
    drop = _dropped(connection)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in raw:
        key = name.decode("latin-1")
        if key.lower() not in drop:
            out.add(key, value.decode("latin-1"))
    _add_via(out)
    return out


def _add_via(headers: CIMultiDict[str]) -> None:
    via = headers.getall("Via", None)
    if via:
        del headers["Via"]
        headers["Via"] = ", ".join((*via, VIA))
    else:
        headers["Via"] = VIA


def error_response(error: UpstreamError) -> web.Response:
    status = 504 if error.code == "upstream_timeout" else 502
    return web.Response(status=status, body=error_body(error.code, error.message),
                        content_type=JSON)


def _has_body(request: web.BaseRequest) -> bool:
    return request.body_exists


class Forwarder:
    """Sends requests upstream through an UpstreamClient and streams the answers back."""

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client

    async def forward(self, request: web.BaseRequest, target: str) -> web.StreamResponse:
        body = request.content if _has_body(request) else None
        try:
            upstream = await self.client.send(request.method, target,
                                              request_headers(request), body)
        except UpstreamError as exc:
            return error_response(exc)
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.close()

    async def _relay(self, request: web.BaseRequest,
                     upstream: UpstreamResponse) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=response_headers(upstream.raw_headers))
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
