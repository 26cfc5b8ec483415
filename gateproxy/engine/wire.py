"""HTTP/1.1 on the wire, both ways: request heads for the upstream, response heads for
the client, chunked framing, and the framing a message's headers announce.

Only bytes: what a head holds (which headers, in which order, closing or not) is the
planner's (gateproxy/http_rules/plan.py); this module writes it down.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from itertools import islice
from typing import Final, NamedTuple

from yarl import URL

from gateproxy.upstream.interface import UNAVAILABLE, UpstreamError

Field = tuple[bytes, bytes]
_BODYLESS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_REASONS: Final = {int(status): status.phrase.encode("ascii") for status in HTTPStatus}
LAST_CHUNK: Final = b"0\r\n\r\n"


class Origin(NamedTuple):
    """Where the upstream is: host, port, TLS, the `Host` of a request without one, and
    the path every target is put under."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    authority: str
    prefix: bytes

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        url = URL(base_url)
        host = url.raw_host or "127.0.0.1"
        tls = url.scheme == "https"
        return cls(host, url.port or (443 if tls else 80),
                   ssl.create_default_context() if tls else None,
                   url.host_port_subcomponent or host,
                   url.raw_path.rstrip("/").encode("ascii"))


def request_head(origin: Origin, method: str, target: str, fields: Sequence[Field],
                 body: bool, chunked: bool) -> bytes:
    """The request head sent upstream: `Host` first (the upstream's authority when the
    client sent none), the header lines in order, then the framing: `Transfer-Encoding:
    chunked` for a body of unknown length, `Content-Length: 0` on a bodiless request whose
    method gives a body meaning (RFC 9110 section 8.6; some servers answer 411 without
    it). A target ending in an empty query loses the `?`."""
    if target.endswith("?") and target.count("?") == 1:
        target = target[:-1]
    lines = [b"%s %s%s HTTP/1.1\r\n" % (method.encode("ascii"), origin.prefix,
                                         target.encode("utf-8", "surrogateescape"))]
    if fields and fields[0][0].lower() == b"host":
        lines.append(b"Host: %s\r\n" % fields[0][1])
        lines += [b"%s: %s\r\n" % field for field in islice(fields, 1, None)]
    else:
        lines.append(b"Host: %s\r\n" % origin.authority.encode("ascii"))
        lines += [b"%s: %s\r\n" % field for field in fields]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif not body and method not in _BODYLESS and not announces_length(fields):
        lines.append(b"Content-Length: 0\r\n")
    lines.append(b"\r\n")
    head = b"".join(lines)
    # A CR or LF inside a name, value or target would split the head: request smuggling.
    # llhttp refuses them from clients; this holds for every header, the proxy's own too.
    if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines) or b"\0" in head:
        raise UpstreamError(UNAVAILABLE, "a request header contains a line break")
    return head


def announces_length(fields: Iterable[Field]) -> bool:
    return any(len(name) == 14 and name.lower() == b"content-length" for name, _ in fields)


def whole_body(head: bytes, body: bytes, chunked: bool) -> Sequence[bytes]:
    """A request head and its whole body, framed, for one write."""
    if not chunked:
        return (head, body)
    return (head, *chunk(body), LAST_CHUNK) if body else (head, LAST_CHUNK)


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    return (b"%x\r\n" % len(data), data, b"\r\n")


def framing(raw: Sequence[Field], names: Sequence[bytes]) -> tuple[bool, bool]:
    """Whether a message announces a Content-Length, and whether its body is chunked (its
    last Transfer-Encoding ends in `chunked`). llhttp has checked that they agree and are
    well formed."""
    chunked = False
    if b"transfer-encoding" in names:
        last = len(names) - 1 - names[::-1].index(b"transfer-encoding")
        chunked = raw[last][1].rsplit(b",", 1)[-1].strip().lower() == b"chunked"
    return b"content-length" in names, chunked


def status_line(status: int, reason: bytes | None = None) -> bytes:
    if reason is None:
        reason = _REASONS.get(status, b"")
    elif not reason.isascii():
        reason = reason.decode("latin-1").encode("utf-8")
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def response_head(status: int, reason: bytes | None, fields: Iterable[Field]) -> bytes:
    """A response head with exactly these header lines."""
    lines = [status_line(status, reason)]
    lines += [b"%s: %s\r\n" % field for field in fields]
    lines.append(b"\r\n")
    return b"".join(lines)
