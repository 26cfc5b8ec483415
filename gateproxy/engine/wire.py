"""HTTP/1.1 on the wire, both ways: request heads for the upstream, response heads for
the client, chunked framing, and the framing a message's headers announce.

Only bytes: what a head holds (which headers, in which order, closing or not) is the
planner's (gateproxy/http_rules/plan.py); this module writes it down.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Final, NamedTuple

from multidict import CIMultiDict
from yarl import URL

from gateproxy.upstream.interface import UNAVAILABLE, UpstreamError

_BODYLESS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
LAST_CHUNK: Final = b"0\r\n\r\n"


class Origin(NamedTuple):
    """Where the upstream is: host, port, TLS, the `Host` of a request without one, and
    the path every target is put under."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    authority: str
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        url = URL(base_url)
        host = url.raw_host or "127.0.0.1"
        tls = url.scheme == "https"
        return cls(host, url.port or (443 if tls else 80),
                   ssl.create_default_context() if tls else None,
                   url.host_port_subcomponent or host, url.raw_path.rstrip("/"))


def request_head(origin: Origin, method: str, target: str, headers: CIMultiDict[str],
                 body: bool, chunked: bool) -> bytes:
    """The request head sent upstream: `Host` first (the upstream's authority when the
    client sent none), the headers in order, then the framing: `Transfer-Encoding:
    chunked` for a body of unknown length, `Content-Length: 0` on a bodiless request whose
    method gives a body meaning (RFC 9110 section 8.6; some servers answer 411 without
    it). A target ending in an empty query loses the `?`."""
    if target.endswith("?") and target.count("?") == 1:
        target = target[:-1]
    lines = [f"{method} {origin.prefix}{target} HTTP/1.1"]
    host = headers.get("Host")
    lines.append(f"Host: {origin.authority if host is None else host}")
    lines += [f"{name}: {value}" for name, value in headers.items()
              if name.lower() != "host"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif not body and method not in _BODYLESS and "Content-Length" not in headers:
        lines.append("Content-Length: 0")
    text = "\r\n".join(lines) + "\r\n\r\n"
    # A CR or LF inside a name, value or target would split the head: request smuggling.
    # llhttp refuses them from clients; this holds for every header, the proxy's own too.
    if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1 \
            or "\0" in text:
        raise UpstreamError(UNAVAILABLE, "a request header contains a line break")
    return text.encode("utf-8", "surrogateescape")


def whole_body(head: bytes, body: bytes, chunked: bool) -> Sequence[bytes]:
    """A request head and its whole body, framed, for one write."""
    if not chunked:
        return (head, body)
    return (head, *chunk(body), LAST_CHUNK) if body else (head, LAST_CHUNK)


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    return (b"%x\r\n" % len(data), data, b"\r\n")


def framing(raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """The Content-Length a message announces (None: none), and whether its body is
    chunked. llhttp has checked that they agree and are well formed."""
    length = None
    chunked = False
    for name, value in raw_headers:
        if len(name) == 14 and name.lower() == b"content-length":
            length = int(value)
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
    return length, chunked


def status_line(status: int, reason: str | None = None) -> str:
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    return f"HTTP/1.1 {status} {reason}"


def response_head(status: int, reason: str | None, headers: Iterable[tuple[str, str]]
                  ) -> bytes:
    """A response head with exactly these header lines."""
    lines = [status_line(status, reason)]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
