"""Every answer the proxy writes itself, read off a raw socket as a client sees it.

Each request goes out as HTTP/1.0 and as HTTP/1.1. Each answer must have an `HTTP/1.1`
status line (on the admin port, aiohttp's server answers HTTP/1.0 in HTTP/1.0), exactly
one `Server: gateproxy`, a JSON error from the one error table where it is an error, and
nothing that names aiohttp or Python or echoes the request (every request carries a
marker in a header and, where it can, in its target).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateproxy import config
from gateproxy.core import answers
from gateproxy.demo.standins import StandIn
from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app
from tests.support.own_answers import GATED_CODE, MARKER, check_own_answer
from tests.support.ports import free_port
from tests.support.rawclient import exchange

TOKEN = "own-answers-token"
VERSIONS = ("1.0", "1.1")
WS = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
WS_KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
MAINTENANCE = "/_gateproxy/dependencies/{name}/maintenance"


@dataclass(frozen=True)
class Case:
    """One own answer: the request's line and extra header lines, where it goes
    (`main`, `admin` or `refused`: a proxy whose upstream refuses), and its status."""

    name: str
    where: str
    line: str  # "METHOD target"
    status: int
    code: str | None = None  # the JSON error's code, for an error
    extra: str = ""
    body: bytes = b""
    versions: tuple[str, ...] = VERSIONS
    head_only: bool = False  # the request's head is never finished (a head timeout)


def _q(path: str) -> str:
    return f"{path}?{MARKER}"


CASES = (
    Case("health", "main", f"GET {_q('/health')}", 404),  # the upstream has no /health
    Case("health HEAD", "main", "HEAD /health", 404),
    Case("live", "main", f"GET {_q('/_gateproxy/live')}", 200),
    Case("ready", "main", "GET /_gateproxy/ready", 200),
    Case("status page", "main", "GET /_gateproxy/status", 200),
    Case("status.json", "main", "GET /_gateproxy/status.json", 200),
    Case("metrics", "main", "GET /_gateproxy/metrics", 200),
    Case("404 under the admin prefix", "main", f"GET {_q('/_gateproxy/nothing')}", 404,
         "not_found"),
    Case("maintenance on the proxy's port", "main",
         f"POST {MAINTENANCE.format(name='docker-runner')}", 404, "not_found"),
    Case("gated 503", "main", f"GET {_q('/api/containers')}", 503, GATED_CODE),
    Case("gated 503 with CORS", "main", "GET /api/containers", 503, GATED_CODE,
         extra="Origin: https://ui.test\r\n"),
    Case("gated WebSocket", "main", "GET /api/containers/x/ws", 503, GATED_CODE, extra=WS + WS_KEY),
    Case("bad path", "main", "GET /a/../../etc", 400, "bad_request"),
    Case("OPTIONS *", "main", "OPTIONS *", 200),
    Case("GET *", "main", "GET *", 400, "bad_request"),
    Case("expectation failed", "main", "POST /echo", 417, "expectation_failed",
         extra="Expect: something-else\r\nContent-Length: 2\r\n", body=b"hi",
         versions=("1.1",)),  # HTTP/1.0 has no Expect to fail
    Case("malformed head", "main", "GET /echo", 400, "bad_request", extra="No colon here\r\n"),
    Case("HTTP/2.0 on an HTTP/1 port", "main", "GET /echo", 505, "http_version_not_supported",
         versions=("2.0",)),
    Case("other host in the target", "main", "GET http://elsewhere.test/echo", 400, "bad_request"),
    Case("upstream timeout", "main", "GET /slow?delay=3", 504, "upstream_timeout"),
    Case("WebSocket without a key", "main", "GET /ws", 400, "bad_request", extra=WS),
    Case("head timeout", "main", "GET /echo", 408, "request_timeout", head_only=True),
    Case("upstream refused", "refused", f"GET {_q('/echo')}", 502, "upstream_unavailable"),
    Case("health, upstream refused", "refused", "GET /health", 503),
    Case("WebSocket, upstream refused", "refused", "GET /ws", 502, "upstream_unavailable",
         extra=WS + WS_KEY),
    Case("admin live", "admin", "GET /_gateproxy/live", 200),
    Case("admin status page", "admin", "GET /_gateproxy/status", 200),
    Case("admin metrics", "admin", "GET /_gateproxy/metrics", 200),
    Case("admin unknown path", "admin", f"GET {_q('/nothing')}", 404, "not_found"),
    Case("admin OPTIONS *", "admin", "OPTIONS *", 200),
    Case("admin wrong method", "admin", "PUT /_gateproxy/live", 405, "method_not_allowed"),
    Case("maintenance without token", "admin",
         f"POST {MAINTENANCE.format(name='docker-runner')}", 401, "unauthorized"),
    Case("maintenance, bad reason", "admin",
         f"POST {MAINTENANCE.format(name='docker-runner')}", 400, "bad_request",
         extra=f"Authorization: Bearer {TOKEN}\r\nContent-Length: 3\r\n", body=b"{x}"),
    Case("maintenance, body too large", "admin",
         f"POST {MAINTENANCE.format(name='docker-runner')}", 413, "payload_too_large",
         extra=f"Authorization: Bearer {TOKEN}\r\nContent-Length: 2000000\r\n",
         body=b"x" * 2_000_000),
    Case("maintenance, no such dependency", "admin",
         f"POST {MAINTENANCE.format(name='nothing')}", 404, "not_found",
         extra=f"Authorization: Bearer {TOKEN}\r\n"),
    Case("maintenance on", "admin", f"POST {MAINTENANCE.format(name='docker-runner')}", 200,
         extra=f"Authorization: Bearer {TOKEN}\r\n"),
    Case("maintenance off", "admin", f"DELETE {MAINTENANCE.format(name='docker-runner')}",
         200, extra=f"Authorization: Bearer {TOKEN}\r\n"),
)


def request_bytes(case: Case, version: str) -> bytes:
    head = (f"{case.line} HTTP/{version}\r\nHost: platform.test\r\nX-Marker: {MARKER}\r\n"
            f"{case.extra}")
    if case.head_only:
        return head.encode("latin-1")
    if version == "1.1":
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1") + case.body


Proxies = dict[str, int]


@pytest.fixture
async def proxies(tmp_path: Path) -> AsyncIterator[Proxies]:
    """Three proxies in front of the rich stand-in upstream: admin endpoints on the proxy's
    port; on an admin port of their own with a token; and one whose upstream refuses
    connections."""
    upstream = StandIn(upstream_app.app())
    await upstream.start()
    common = ("cors: {allow_origins: ['https://ui.test']}\n"
              "upstream: {read_timeout_ms: 500}\n"
              "limits: {header_timeout_ms: 500}\n")
    main_file, admin_file = tmp_path / "main.yaml", tmp_path / "admin.yaml"
    main_file.write_text(common)
    admin_file.write_text(common + f"admin_port: {free_port()}\n")

    def load(file: Path, url: str, **extra: str) -> config.Config:
        return config.load(str(file), upstream_app.gateway_env(
            url, DOCKER_RUNNER_BASE_URL=f"http://127.0.0.1:{free_port()}", **extra))

    main = Gateway(load(main_file, upstream.url))
    admin = Gateway(load(admin_file, upstream.url, GATEPROXY_ADMIN_TOKEN=TOKEN))
    refused = Gateway(load(main_file, f"http://127.0.0.1:{free_port()}"))
    gateways = (main, admin, refused)
    try:
        for gateway in gateways:
            await gateway.start()
        assert admin.admin_port is not None
        yield {"main": main.port, "admin": admin.admin_port, "refused": refused.port}
    finally:
        for gateway in gateways:
            if gateway.serving:
                await gateway.stop()
        await upstream.stop()


@pytest.mark.parametrize(("case", "version"),
                         [(case, version) for case in CASES for version in case.versions],
                         ids=lambda v: v.name if isinstance(v, Case) else f"HTTP/{v}")
async def test_every_own_answer_is_written_one_way(proxies: Proxies, case: Case,
                                                   version: str) -> None:
    method = case.line.split(" ", 1)[0]
    got = await exchange(proxies[case.where], request_bytes(case, version), method)
    check_own_answer(got, case.status, case.code,
                     "1.0" if case.where == "admin" and version == "1.0" else "1.1")
    if case.line.startswith("OPTIONS *"):
        assert got.header("Allow"), got.headers
        assert got.body == b""


# Error codes no request of this test can bring about: a handler that fails; a connection
# over the cap (tests/hostile/test_hostile_slow.py checks that answer's bytes); a caller
# off the loopback (tests/process/test_admin_access.py, from a network namespace).
UNREACHABLE_HERE = frozenset({"internal_error", "too_many_connections", "forbidden"})


def test_every_error_code_has_a_case() -> None:
    """A code added to the error table needs a case above."""
    assert set(answers.STATUS) - UNREACHABLE_HERE == {
        case.code for case in CASES if case.code is not None} - {GATED_CODE}
