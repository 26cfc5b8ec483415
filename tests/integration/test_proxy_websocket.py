"""The WebSocket relay with a client from another library (`websockets`) and raw
handshakes: upgrade detection, refusals, close codes both ways, a vanished end,
backpressure, shutdown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.typing import Origin, Subprotocol

from gateproxy.demo.standins import StandIn
from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app
from tests.support.rawclient import read_exchange


@pytest.fixture
async def gateway(upstream: StandIn) -> AsyncIterator[Gateway]:
    gw = await upstream_app.start_gateway(upstream.url)
    yield gw
    await gw.stop()


def ws_url(gateway: Gateway, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{gateway.port}{path}"


async def ending() -> tuple[int | None, str]:
    for _ in range(200):
        if upstream_app.WS_ENDINGS:
            return upstream_app.WS_ENDINGS.pop()
        await asyncio.sleep(0.01)
    raise AssertionError("the upstream never saw its session end")


async def test_websockets_client_talks_through_the_proxy(gateway: Gateway) -> None:
    async with connect(ws_url(gateway, "/ws?room=a%20b"),
                       subprotocols=[Subprotocol("superchat")], max_size=None,
                       origin=Origin("https://ui.example"),
                       additional_headers={"Cookie": "sid=42",
                                           "Authorization": "Bearer abc"}) as ws:
        assert ws.subprotocol == "superchat"
        assert ws.response is not None
        assert ws.response.headers["X-Upstream-Ws"] == "yes"
        assert ws.response.headers["Set-Cookie"] == "ws=1; Path=/"
        hello = json.loads(await ws.recv())
        assert hello == {"hello": "room=a b", "cookie": "sid=42",
                         "origin": "https://ui.example", "auth": "Bearer abc"}
        await ws.send("text \u2713")
        assert await ws.recv() == "text \u2713"
        await ws.send(b"\x00\xffbinary")
        assert await ws.recv() == b"\x00\xffbinary"
        latency = await (await ws.ping(b"are you there"))
        assert latency >= 0
        await ws.send("big:3000000")
        assert len(await ws.recv()) == 3_000_000
        assert gateway.tunnels.open_count == 1
        await ws.close(code=4000, reason="bye")
    assert ws.close_code == 1000  # the upstream's (aiohttp's) reply, relayed
    assert await ending() == (4000, "bye")
    for _ in range(100):
        if gateway.tunnels.open_count == 0:
            break
        await asyncio.sleep(0.01)
    assert gateway.tunnels.open_count == 0


async def test_an_upstream_close_reaches_the_client_with_code_and_reason(
        gateway: Gateway) -> None:
    async with connect(ws_url(gateway)) as ws:
        await ws.recv()
        await ws.send("close:4001:done here")
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 4001 and ws.close_reason == "done here"
    # websockets echoes the code in its reply; the upstream hears that reply.
    assert (await ending())[0] == 4001


async def test_refusal_is_the_upstreams_status_not_a_101(gateway: Gateway) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(ws_url(gateway, "/ws?refuse=403")):
            pass
    assert refused.value.response.status_code == 403
    assert refused.value.response.headers["X-Refused"] == "yes"


async def test_unreachable_upstream_is_a_502_not_a_101() -> None:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    gw = await upstream_app.start_gateway(dead)
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(ws_url(gw)):
                pass
    finally:
        await gw.stop()
    assert refused.value.response.status_code == 502
    assert b"upstream_unavailable" in refused.value.response.body


async def test_gated_path_upgrade_gets_the_503_before_any_upgrade(gateway: Gateway) -> None:
    # docker-runner is unreachable in these tests, so its routes are gated.
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(ws_url(gateway, "/api/containers/c1/terminal/ws")):
            pass
    assert refused.value.response.status_code == 503
    assert b"docker_runner_not_ready" in refused.value.response.body


async def handshake(port: int, connection: str, path: str = "/ws") -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n"
                  f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                  f"Sec-WebSocket-Key: {key}\r\n\r\n").encode())
    answer = await read_exchange(reader, "GET")
    return reader, writer, answer.status


@pytest.mark.parametrize("connection", ["Upgrade", "keep-alive, Upgrade", "upgrade,keep-alive"])
async def test_upgrade_is_detected_from_connection_tokens(gateway: Gateway,
                                                          connection: str) -> None:
    _, writer, status = await handshake(gateway.port, connection)
    writer.close()
    assert status == 101


async def test_an_invalid_handshake_is_a_400(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                 b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")  # no key
    answer = await read_exchange(reader, "GET")
    writer.close()
    assert answer.status == 400


async def test_a_client_that_vanishes_closes_the_upstream_with_1011(gateway: Gateway) -> None:
    reader, writer, status = await handshake(gateway.port, "Upgrade")
    assert status == 101
    await reader.read(10)  # the hello frame has started to arrive
    writer.transport.abort()
    assert await ending() == (1011, "")


async def test_shutdown_closes_open_websockets_with_1001(upstream: StandIn) -> None:
    gw = await upstream_app.start_gateway(upstream.url)
    ws = await connect(ws_url(gw))
    await ws.recv()
    assert gw.tunnels.open_count == 1
    await asyncio.wait_for(gw.stop(), 10)
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 1001
    assert gw.tunnels.open_count == 0
    assert (await ending())[0] == 1001


async def test_a_reader_that_does_not_read_holds_the_writer_back(gateway: Gateway) -> None:
    """Backpressure: the upstream floods 1 MiB messages at a client that reads nothing;
    the proxy must not read them all into memory."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"http://127.0.0.1:{gateway.port}/ws",
                                   max_msg_size=2 * 1024 * 1024)
        await ws.receive()
        await ws.send_str("flood:120")
        await asyncio.sleep(1.5)
        stuck_at = upstream_app.FLOOD_SENT[0]
        # Socket buffers and aiohttp's queues hold a few MiB; 120 would mean no brake.
        assert stuck_at < 48, stuck_at
        received = 0
        while received < 120:
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.BINARY
            received += 1
        assert upstream_app.FLOOD_SENT[0] == 120
        await ws.close()
