"""The header rules of forwarding, both ways (docs/headers.md lists them all).

Hop-by-hop headers (and those named in `Connection`) are dropped both ways,
`X-Forwarded-*` and `Via` are added; a request header that cannot reach the upstream
byte for byte is refused (`BadField`).
"""

from __future__ import annotations

import functools

from multidict import CIMultiDict

from gateproxy.upstream.interface import RawHeaders

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authorization", "proxy-authenticate",
    # The proxy has answered `Expect: 100-continue` for the client itself.
    "expect",
})
_SWITCH = frozenset({"connection", "upgrade"})
VIA = "1.1 gateproxy"


def _dropped(connection: str | None) -> frozenset[str]:
    if not connection:
        return HOP_BY_HOP
    return _dropped_by(connection)


@functools.lru_cache(maxsize=256)
def _dropped_by(connection: str) -> frozenset[str]:
    # Cached: nearly every client sends one of a handful of values (`keep-alive`).
    return HOP_BY_HOP | {t.strip().lower() for t in connection.split(",")}


class BadField(ValueError):
    """A request header that cannot be forwarded byte for byte."""


def header_text(raw: bytes) -> str:
    """A response header name or value as the core's writer re-encodes it (UTF-8).
    Bytes that are not UTF-8 cannot survive that; they travel as their Latin-1 reading
    (docs/headers.md)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _request_text(raw: bytes) -> str:
    """A request header name or value, which must reach the upstream byte for byte: both
    upstream clients write UTF-8, so bytes that are not UTF-8 are refused (BadField),
    never re-encoded."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadField("a request header has bytes that are not UTF-8") from None


def client_address(peername: object) -> str:
    """The client's address as `X-Forwarded-For` carries it, read from the
    connection's peer name ('' when unknown)."""
    if peername is None:
        return ""
    if isinstance(peername, list | tuple):
        return str(peername[0])
    return str(peername)


def forwarded_headers(raw_headers: RawHeaders, connection: str | None, peer: str, tls: bool
                      ) -> CIMultiDict[str]:
    """The headers to send upstream, from the client's raw headers, its `Connection`
    header (every line of it, as one list), address and whether it came over TLS;
    BadField for a header that cannot go
    byte for byte. Hop-by-hop ones go first, so that a client cannot remove our
    X-Forwarded-* by naming them in `Connection`."""
    drop = _dropped(connection)
    out: CIMultiDict[str] = CIMultiDict()
    # A name spelled in several cases (`X-A: 1`, `x-a: 2`) goes out spelled as its first
    # line, every value kept (docs/headers.md): what the upstream has always seen.
    spelling: dict[str, str] = {}
    for name, value in raw_headers:
        key = _request_text(name)
        lowered = key.lower()
        if lowered not in drop:
            out.add(spelling.setdefault(lowered, key), _request_text(value))
    previous = out.getall("X-Forwarded-For", None)
    if previous:
        del out["X-Forwarded-For"]
        out["X-Forwarded-For"] = ", ".join((*previous, peer))
    else:
        out["X-Forwarded-For"] = peer
    if "X-Forwarded-Proto" not in out:
        out["X-Forwarded-Proto"] = "https" if tls else "http"
    if "X-Forwarded-Host" not in out and "Host" in out:
        out["X-Forwarded-Host"] = out["Host"]
    add_via(out)
    return out


def response_headers(raw: RawHeaders | list[tuple[bytes, bytes]],
                     keep: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """An upstream answer's header lines for the client: hop-by-hop ones out (but those
    in `keep`), `Via` added; a `Transfer-Encoding` keeps its place for the framing the
    planner writes there, or none."""
    # Several Connection lines are one list (RFC 9110 section 5.3).
    connection = ", ".join(value.decode("latin-1") for name, value in raw
                           if name.lower() == b"connection") or None
    drop = _dropped(connection)
    if keep:
        drop = drop - keep
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in raw:
        key = header_text(name)
        lowered = key.lower()
        if lowered not in drop:
            out.add(key, header_text(value))
        elif lowered == "transfer-encoding":
            out.add(key, "chunked")
    add_via(out)
    return out


def switched_headers(raw: RawHeaders | list[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """A 101's header lines for the client: `Connection` and `Upgrade` as sent."""
    return response_headers(raw, _SWITCH)


def add_via(headers: CIMultiDict[str]) -> None:
    via = headers.getall("Via", None)
    if via:
        del headers["Via"]
        headers["Via"] = ", ".join((*via, VIA))
    else:
        headers["Via"] = VIA
