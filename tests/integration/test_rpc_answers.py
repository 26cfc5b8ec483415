"""Gated RPC methods answered in the client's own protocol, judged by a real client: the
Connect client of @connectrpc/connect-node (tests/support/connect), over HTTP/1.1 with
the Connect protocol and with gRPC-Web, in front of a real connect-node server.

While docker-runner is down the client's own library reads UNAVAILABLE (or the
configured code) and the dependency's message on the gated methods, and real answers on
the others; once docker-runner is back, the gated methods answer again, without a
restart. The raw bytes of each form are checked too, over a raw socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateproxy.core.dependency import State
from gateproxy.demo.standins import StandIn
from gateproxy.serve.gateway import Gateway
from tests.support.connect_oracle import EchoServer, call
from tests.support.gateways import MakeGateway, url
from tests.support.ports import free_port
from tests.support.rawclient import exchange
from tests.support.waiting import wait_for

PING = "/agyn.test.v1.Echo/Ping"
WATCH = "/agyn.test.v1.Echo/Watch"
PROTOCOLS = ("connect", "grpc-web")


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer(free_port())
    yield server
    server.stop()


async def gateway(make_gateway: MakeGateway, tmp_path: Path, upstream: str, runner: str,
                  gated: str, grpc_code: str | None = None) -> Gateway:
    path = tmp_path / "rpc.yaml"
    code = f"      grpc_code: {grpc_code}\n" if grpc_code else ""
    path.write_text(
        f"upstream: {{url: '{upstream}'}}\n"
        "dependencies:\n"
        "  - name: docker-runner\n"
        f"    base_url: '{runner}'\n"
        "    probe_interval_ms: 200\n"
        "    probe_timeout_ms: 500\n"
        "    retry: {base_delay_ms: 50, max_delay_ms: 200, jitter_ms: 0}\n"
        f"    gated_routes: [{gated}]\n"
        "    not_ready:\n"
        "      message: docker-runner not ready (é)\n" + code)
    return await make_gateway({"GATEPROXY_HOST": "127.0.0.1", "GATEPROXY_PORT": "0"},
                              str(path))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_gated_method_is_unavailable_to_the_client_and_the_others_answer(
        protocol: str, echo: EchoServer, runner: StandIn, make_gateway: MakeGateway,
        tmp_path: Path) -> None:
    await runner.stop()
    gw = await gateway(make_gateway, tmp_path, echo.url, runner.url, PING)
    await wait_for(lambda: gw.node.statuses()[0].state is State.DOWN, timeout=5)
    base = url(gw, "").rstrip("/")
    assert await call(base, protocol, "Ping", "hi") == {
        "code": "Unavailable", "message": "docker-runner not ready (é)"}
    assert await call(base, protocol, "Watch", "w") == {"texts": ["w 1", "w 2", "w 3"]}
    await runner.start()
    await wait_for(lambda: gw.node.statuses()[0].is_up, timeout=5)
    assert await call(base, protocol, "Ping", "hi") == {"texts": ["pong: hi"]}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_gated_stream_ends_with_the_configured_code(
        protocol: str, echo: EchoServer, runner: StandIn, make_gateway: MakeGateway,
        tmp_path: Path) -> None:
    await runner.stop()
    gw = await gateway(make_gateway, tmp_path, echo.url, runner.url, WATCH,
                       grpc_code="RESOURCE_EXHAUSTED")
    base = url(gw, "").rstrip("/")
    assert await call(base, protocol, "Watch", "w") == {
        "code": "ResourceExhausted", "message": "docker-runner not ready (é)"}
    assert await call(base, protocol, "Ping", "hi") == {"texts": ["pong: hi"]}


async def test_each_forms_bytes(echo: EchoServer, runner: StandIn, make_gateway: MakeGateway,
                                tmp_path: Path) -> None:
    """The wire form of each protocol's gated answer (docs/gate.md's table)."""
    await runner.stop()
    gw = await gateway(make_gateway, tmp_path, echo.url, runner.url, "/agyn.test.v1.Echo")

    async def gated(path: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
        head = "".join(f"{h}\r\n" for h in headers)
        answer = await exchange(gw.port, (f"POST {path} HTTP/1.1\r\nHost: t\r\n{head}"
                                          "Content-Length: 0\r\n\r\n").encode())
        return answer.status, {name.lower(): value for name, value in answer.headers}, \
            answer.body

    status, headers, body = await gated(PING, "Content-Type: application/json",
                                        "Connect-Protocol-Version: 1")
    assert (status, body) == (503, b'{"code":"unavailable","message":'
                                   b'"docker-runner not ready (\xc3\xa9)"}')
    assert headers["content-type"] == "application/json" and "retry-after" in headers
    status, headers, body = await gated(WATCH, "Content-Type: application/connect+json")
    end = b'{"error":{"code":"unavailable","message":"docker-runner not ready (\xc3\xa9)"}}'
    assert (status, body) == (200, b"\x02" + len(end).to_bytes(4, "big") + end)
    assert headers["content-type"] == "application/connect+json"
    status, headers, body = await gated(PING, "Content-Type: application/grpc-web+proto",
                                        "Origin: https://ui.test")
    assert (status, body) == (200, b"")
    assert headers["grpc-status"] == "14"
    assert headers["grpc-message"] == "docker-runner not ready (%C3%A9)"
    assert int(headers["grpc-retry-pushback-ms"]) >= 0
    # Not a procedure, no RPC content type: the gate's JSON 503, as for any client.
    status, headers, _ = await gated("/agyn.test.v1.Echo", "Content-Type: application/json")
    assert status == 503 and headers["content-type"] == "application/json"
