"""The gate's answer in an RPC client's own form (gateproxy/http_rules/rpc.py), as pure
functions: which protocol a head speaks, and the answer of each."""

from __future__ import annotations

import orjson
import pytest

from gateproxy.core.answers import GRPC_CODES
from gateproxy.http_rules import rpc

CORS = [("Access-Control-Allow-Origin", "https://ui.test"), ("Vary", "Origin")]


@pytest.mark.parametrize(("content_type", "connect", "path", "kind"), [
    (b"application/grpc", False, "/a.B/C", rpc.GRPC),
    (b"application/grpc+proto", False, "/a.B/C", rpc.GRPC),
    (b"application/grpc+json", False, "/a.B/C", rpc.GRPC),
    (b"application/grpc-web", False, "/a.B/C", rpc.GRPC_WEB),
    (b"application/grpc-web+proto", False, "/a.B/C", rpc.GRPC_WEB),
    (b"application/grpc-web-text", False, "/a.B/C", rpc.GRPC_WEB),
    (b"Application/GRPC-Web+proto; charset=x", False, "/a.B/C", rpc.GRPC_WEB),
    (b"application/connect+json", False, "/a.B/C", rpc.CONNECT_STREAM),
    (b"application/connect+proto", False, "/a.B/C", rpc.CONNECT_STREAM),
    (b"application/json", True, "/a.B/C", rpc.CONNECT_UNARY),
    (b"application/proto", False, "/pkg.v1.Service/Method", rpc.CONNECT_UNARY),
    (b"application/json", False, "/pkg.v1.Service/Method", rpc.CONNECT_UNARY),
    (None, True, "/pkg.v1.Service/Method", rpc.CONNECT_UNARY),  # a GET of Connect
    (b"application/json", False, "/api/containers", rpc.PLAIN),  # not a procedure
    (b"application/json", True, "/api/containers", rpc.PLAIN),
    (b"text/html", False, "/pkg.v1.Service/Method", rpc.PLAIN),
    (None, False, "/pkg.v1.Service/Method", rpc.PLAIN),
])
def test_the_protocol_is_told_from_the_head(content_type: bytes | None, connect: bool,
                                            path: str, kind: str) -> None:
    assert rpc.protocol(content_type, connect, path) == kind


def test_grpc_message_is_percent_encoded_as_grpc_writes_it() -> None:
    assert rpc.percent_encoded("down: 100% (é)\n") == "down: 100%25 (%C3%A9)%0A"


@pytest.mark.parametrize("kind", [rpc.GRPC, rpc.GRPC_WEB])
def test_grpc_and_grpc_web_get_trailers_only(kind: str) -> None:
    answer = rpc.gated(kind, b"application/grpc-web+proto" if kind == rpc.GRPC_WEB else None,
                       "UNAVAILABLE", "runner down", 3, CORS, close=False)
    headers = dict(answer.headers)
    assert (answer.status, answer.body) == (200, b"")
    assert headers["grpc-status"] == "14" and headers["grpc-message"] == "runner down"
    assert headers["grpc-retry-pushback-ms"] == "3000" and headers["Retry-After"] == "3"
    # A browser's gRPC-Web script reads the status from headers CORS must expose.
    assert ("Access-Control-Expose-Headers" in headers) is (kind == rpc.GRPC_WEB)


def test_connect_unary_gets_its_json_error_with_the_codes_http_status() -> None:
    answer = rpc.gated(rpc.CONNECT_UNARY, b"application/proto", "RESOURCE_EXHAUSTED",
                       "busy", 1, [], close=True)
    assert (answer.status, answer.close) == (429, True)
    assert orjson.loads(answer.body) == {"code": "resource_exhausted", "message": "busy"}


def test_connect_streaming_gets_one_end_of_stream_message() -> None:
    answer = rpc.gated(rpc.CONNECT_STREAM, b"application/connect+proto", "UNAVAILABLE",
                       "down", 1, [], close=False)
    assert answer.status == 200
    assert dict(answer.headers)["Content-Type"] == "application/connect+proto"
    flags, length, end = answer.body[0], int.from_bytes(answer.body[1:5], "big"), \
        answer.body[5:]
    assert (flags, length) == (0x02, len(end))
    assert orjson.loads(end) == {"error": {"code": "unavailable", "message": "down"}}


def test_every_grpc_code_has_its_connect_form() -> None:
    assert sorted(number for number, _, _ in GRPC_CODES.values()) == list(range(1, 17))
    assert GRPC_CODES["UNAVAILABLE"] == (14, "unavailable", 503)
