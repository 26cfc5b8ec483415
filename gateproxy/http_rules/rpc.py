"""The gate's answer in the form an RPC client understands, told from the request's head
(docs/gate.md has the table).

A gRPC or gRPC-Web client reads its status from `grpc-status` and `grpc-message`, a
Connect client from a JSON error (unary) or from an end-of-stream message (streaming);
the gate's JSON 503 would be a body their generated code cannot decode. Each form
carries the dependency's `not_ready.message` and its `not_ready.grpc_code`, and the time
of the next probe (`Retry-After`, and `grpc-retry-pushback-ms` for gRPC).
"""

from __future__ import annotations

import re
from typing import Final

import orjson

from gateproxy.core import answers
from gateproxy.core.answers import GRPC_CODES, Answer

PLAIN, GRPC, GRPC_WEB, CONNECT_UNARY, CONNECT_STREAM = (
    "plain", "grpc", "grpc-web", "connect-unary", "connect-stream")

# A Connect procedure path: /package.Service/Method.
_PROCEDURE: Final = re.compile(r"/[A-Za-z_][\w.]*\.[A-Za-z_]\w*/[A-Za-z_]\w*")
# gRPC-Web responses a browser script may read (the status is in these headers).
_EXPOSED: Final = ("Access-Control-Expose-Headers", "grpc-status, grpc-message")
_END_STREAM: Final = 0x02  # Connect's envelope flag of the end-of-stream message


def protocol(content_type: bytes | None, connect_version: bool, target: str) -> str:
    """Which protocol a request speaks, from its `Content-Type`, whether it sent
    `Connect-Protocol-Version`, and its target (a Connect unary call's path names its
    procedure)."""
    if content_type is None:
        return CONNECT_UNARY if connect_version and _procedure(target) else PLAIN
    media = content_type.split(b";", 1)[0].strip().lower()
    if media.startswith(b"application/grpc-web"):
        return GRPC_WEB
    if media == b"application/grpc" or media.startswith(b"application/grpc+"):
        return GRPC
    if media.startswith(b"application/connect+"):
        return CONNECT_STREAM
    if (connect_version or media in (b"application/proto", b"application/json")) \
            and _procedure(target):
        return CONNECT_UNARY
    return PLAIN


def _procedure(target: str) -> bool:
    return _PROCEDURE.fullmatch(target.split("?", 1)[0]) is not None


def percent_encoded(message: str) -> str:
    """`grpc-message` as gRPC writes it: UTF-8, with `%` and every byte outside printable
    ASCII percent-encoded."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}"
                   for b in message.encode("utf-8"))


def gated(kind: str, content_type: bytes | None, grpc_code: str, message: str,
          retry_after_s: int, cors: list[tuple[str, str]], close: bool) -> Answer:
    """The gate's answer for a request of protocol `kind`, any but PLAIN (whose answer is
    the JSON 503); `cors`: the CORS lines the gate gives this request's origin."""
    number, connect_code, status = GRPC_CODES[grpc_code]
    retry = ("Retry-After", str(retry_after_s))
    if kind in (GRPC, GRPC_WEB):
        # Trailers-Only: the status in the head, no body (gRPC over HTTP/2, and gRPC-Web
        # over either protocol, read it there).
        echoed = (content_type or b"application/grpc").decode("latin-1")
        headers = [("Content-Type", echoed), ("grpc-status", str(number)),
                   ("grpc-message", percent_encoded(message)),
                   ("grpc-retry-pushback-ms", str(retry_after_s * 1000)), retry,
                   ("Cache-Control", "no-store")]
        if kind == GRPC_WEB and cors:
            headers += [*cors, _EXPOSED]
        return Answer(200, tuple(headers), b"", close)
    error = {"code": connect_code, "message": message}
    if kind == CONNECT_UNARY:
        return Answer(status, (("Content-Type", answers.JSON), retry,
                               ("Cache-Control", "no-store"), *cors),
                      orjson.dumps(error), close)
    # CONNECT_STREAM: the stream's one message is its end, carrying the error (always
    # JSON, whatever the codec of the messages).
    end = orjson.dumps({"error": error})
    envelope = bytes((_END_STREAM,)) + len(end).to_bytes(4, "big") + end
    echoed = (content_type or b"application/connect+json").decode("latin-1")
    return Answer(200, (("Content-Type", echoed), retry, ("Cache-Control", "no-store"),
                        *cors), envelope, close)
