"""The proxy's own answers, as values and as bytes: one table of error codes, one JSON
error body, one head writer.

Every answer the proxy gives itself (not relayed from the upstream) is an `Answer`
built here, and written as the bytes `render` makes (the admin port's aiohttp
application writes the same headers). Own answers
carry `Server: gateproxy` and never a library or Python version, their status line says
HTTP/1.1, and their bodies never echo request bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, NamedTuple

import orjson

JSON: Final = "application/json"
SERVER: Final = "gateproxy"  # the Server of the proxy's own answers: no version
# What `OPTIONS *` names on the proxy's port (it forwards every method; these are the
# usual ones) and on the admin port.
ALLOW: Final = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
ADMIN_ALLOW: Final = "GET, HEAD, POST, DELETE"

# gRPC's status codes by name, with the Connect code and the HTTP status of each: a gated
# RPC is answered with the dependency's `not_ready.grpc_code` (gateproxy/http_rules/rpc.py).
# From grpc/status.h and connectrpc.com/docs/protocol ("Error Codes").
GRPC_CODES: Final[dict[str, tuple[int, str, int]]] = {
    "CANCELLED": (1, "canceled", 499),
    "UNKNOWN": (2, "unknown", 500),
    "INVALID_ARGUMENT": (3, "invalid_argument", 400),
    "DEADLINE_EXCEEDED": (4, "deadline_exceeded", 504),
    "NOT_FOUND": (5, "not_found", 404),
    "ALREADY_EXISTS": (6, "already_exists", 409),
    "PERMISSION_DENIED": (7, "permission_denied", 403),
    "RESOURCE_EXHAUSTED": (8, "resource_exhausted", 429),
    "FAILED_PRECONDITION": (9, "failed_precondition", 400),
    "ABORTED": (10, "aborted", 409),
    "OUT_OF_RANGE": (11, "out_of_range", 400),
    "UNIMPLEMENTED": (12, "unimplemented", 501),
    "INTERNAL": (13, "internal", 500),
    "UNAVAILABLE": (14, "unavailable", 503),
    "DATA_LOSS": (15, "data_loss", 500),
    "UNAUTHENTICATED": (16, "unauthenticated", 401),
}

# Every error code the proxy answers with, and its status. Upstream failures map onto
# the last two (gateproxy/upstream/interface.py); the gate's 503 has the code configured
# per dependency.
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
_NO_STORE: Final = ("Cache-Control", "no-store")


class Answer(NamedTuple):
    """An answer of the proxy's own: its status, headers in the order written (`Server`,
    `Content-Length` and `Date` are the writer's), body, and whether the connection
    ends after it. (A named tuple, not a dataclass: one is made for every gated request,
    and a tuple is made three times faster.)"""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    close: bool = False

    def with_header(self, name: str, value: str) -> Answer:
        return Answer(self.status, (*self.headers, (name, value)), self.body, self.close)

    def closing(self) -> Answer:
        return Answer(self.status, self.headers, self.body, True)


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def error(code: str, message: str, *, close: bool = False) -> Answer:
    """The proxy's JSON error `code` (a key of STATUS)."""
    return Answer(STATUS[code], (("Content-Type", JSON), _NO_STORE),
                  error_body(code, message), close)


def json(status: int, body: object) -> Answer:
    """A JSON answer that no cache may keep."""
    return Answer(status, (("Content-Type", JSON), _NO_STORE), orjson.dumps(body))


def server_options(allow: str) -> Answer:
    """The answer to `OPTIONS *` (RFC 9110 section 9.3.7): no body, what is allowed."""
    return Answer(200, (("Allow", allow),))


# What a refusal of aiohttp's router (no route, a method the route lacks, a body over
# the size limit) becomes: the proxy's JSON error, not aiohttp's text page.
_REFUSALS: Final = {404: ("not_found", "no such endpoint of the proxy"),
                    405: ("method_not_allowed", "this endpoint does not take that method"),
                    413: ("payload_too_large", "the request body is too large")}


def refusal(status: int, allow: str | None = None) -> Answer:
    """The proxy's own answer to a request its router refused with `status` (and the
    `Allow` of a 405)."""
    code, message = _REFUSALS.get(status, ("bad_request", "the request cannot be served")
                                  if status < 500 else
                                  ("internal_error", "the proxy failed to answer"))
    answer = error(code, message)
    return answer if allow is None else answer.with_header("Allow", allow)


def head(status: int, headers: Iterable[tuple[str, str]], date: str | None = None) -> bytes:
    """An HTTP/1.1 response head: the status line, `headers` in
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


def render(answer: Answer, date: str, *, keep_alive_line: bool = False,
           body: bool = True) -> bytes:
    """The bytes of `answer`: `Server`, `Content-Length`, `Date`, then a closing
    answer's `Connection: close` (`keep_alive_line`: `Connection: keep-alive`, for an
    HTTP/1.0 client that asked to keep its connection); `body` False: the head alone
    (the answer to HEAD)."""
    headers = [*answer.headers, ("Server", SERVER), ("Content-Length", str(len(answer.body)))]
    written = head(answer.status, headers, date)
    if answer.close:
        written = written[:-2] + b"Connection: close\r\n\r\n"
    elif keep_alive_line:
        written = written[:-2] + b"Connection: keep-alive\r\n\r\n"
    return written + answer.body if body else written


class _Clock:
    """The `Date` of answers (RFC 9110 section 6.6.1): made once a second, not once an
    answer."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = formatdate(second, usegmt=True)
        return self._text


http_date: Final = _Clock().now


def error_bytes(code: str, message: str, *extra: tuple[str, str]) -> bytes:
    """The proxy's JSON error `code` as a complete response that closes the connection,
    written before a request could be parsed (no Date: there is no request yet)."""
    body = error_body(code, message)
    headers = [("Content-Type", JSON), ("Content-Length", str(len(body))), _NO_STORE,
               ("Connection", "close"), *extra]
    return head(STATUS[code], headers) + body
