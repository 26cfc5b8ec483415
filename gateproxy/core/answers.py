"""The proxy's own answers: one table of error codes, one JSON error body, one head
writer.

Every answer the proxy gives itself (not relayed from the upstream) is built here, as
an aiohttp response or, for code that writes to a socket directly, as bytes. Own answers
carry `Server: gateproxy` and never a library or Python version, their status line says
HTTP/1.1, and their bodies never echo request bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

import orjson
from aiohttp import web

from gateproxy.aio.wire import SERVER, own_response

__all__ = ["ADMIN_ALLOW", "ALLOW", "JSON", "SERVER", "STATUS", "error", "error_body", "error_bytes",
           "for_exception", "head", "json", "own", "own_bytes"]

JSON: Final = "application/json"
# What `OPTIONS *` names on the proxy's port (it forwards every method; these are the
# usual ones) and on the admin port.
ALLOW: Final = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
ADMIN_ALLOW: Final = "GET, HEAD, POST, DELETE"

# Every error code the proxy answers with, and its status. Upstream failures map onto
# the last two (upstream.py, aio/client.py); the gate's 503 has the code configured per
# dependency.
STATUS: Final[dict[str, int]] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "payload_too_large": 413,
    "expectation_failed": 417,
    "internal_error": 500,
    "too_many_connections": 503,
    "http_version_not_supported": 505,
    "upstream_unavailable": 502,
    "upstream_timeout": 504,
}


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def error(code: str, message: str, *, close: bool = False) -> web.Response:
    """The proxy's JSON error `code` (a key of STATUS) as an aiohttp response."""
    return own(STATUS[code], error_body(code, message),
               [("Content-Type", JSON), ("Cache-Control", "no-store")], close=close)


def server_options(allow: str) -> web.Response:
    """The answer to `OPTIONS *` (RFC 9110 section 9.3.7): no body, what is allowed."""
    return own(200, b"", [("Allow", allow)])


def json(status: int, body: object) -> web.Response:
    """A JSON answer of the proxy's own that no cache may keep."""
    return own(status, orjson.dumps(body),
               [("Content-Type", JSON), ("Cache-Control", "no-store")])


# What aiohttp's own refusals (no route, a method the route lacks, a body over the size
# limit) become: the proxy's JSON error, not aiohttp's text page with its Server header.
_EXCEPTION_CODES: Final = {404: "not_found", 405: "method_not_allowed",
                           413: "payload_too_large"}
_EXCEPTION_MESSAGES: Final = {"not_found": "no such endpoint of the proxy",
                              "method_not_allowed": "this endpoint does not take that method",
                              "payload_too_large": "the request body is too large"}


def for_exception(exc: web.HTTPException) -> web.Response:
    """The proxy's own answer in place of an aiohttp HTTPException (an `Allow` kept)."""
    code = _EXCEPTION_CODES.get(exc.status, "bad_request" if exc.status < 500
                                else "internal_error")
    answer = error(code, _EXCEPTION_MESSAGES.get(code, "the request cannot be served"))
    allow = exc.headers.get("Allow")
    if allow is not None:
        answer.headers["Allow"] = allow
    return answer


def own(status: int, body: bytes, headers: Iterable[tuple[str, str]],
        *, close: bool = False) -> web.Response:
    """An answer of the proxy's own, with its `Server`."""
    answer = own_response(status, body, [*headers, ("Server", SERVER)])
    if close:
        answer.force_close()
    return answer


def own_bytes(status: int, body: bytes, headers: Iterable[tuple[str, str]],
              date: str) -> bytes:
    """The bytes aiohttp writes for `own(status, body, headers)` to an HTTP/1.1
    keep-alive client, for code that writes to a socket directly."""
    return head(status, [*headers, ("Server", SERVER), ("Content-Length", str(len(body)))],
                date) + body


def head(status: int, headers: Iterable[tuple[str, str]], date: str | None = None) -> bytes:
    """An HTTP/1.1 response head as aiohttp writes one: the status line, `headers` in
    order, then `Date` when one is given and `Server` when `headers` has none."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    names = set()
    for name, value in headers:
        names.add(name.lower())
        lines.append(f"{name}: {value}")
    if date is not None:
        lines.append(f"Date: {date}")
    if "server" not in names:
        lines.append(f"Server: {SERVER}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def error_bytes(code: str, message: str, *extra: tuple[str, str]) -> bytes:
    """The proxy's JSON error `code` as a complete response that closes the connection,
    for code that writes to a socket directly."""
    body = error_body(code, message)
    headers = [("Content-Type", JSON), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store"), ("Connection", "close"), *extra]
    return head(STATUS[code], headers) + body
