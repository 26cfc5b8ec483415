"""The proxy port's HTTP core (gateproxy/engine/) from outside: a real Gateway between a raw
client socket and real upstreams on 127.0.0.1 (the rich stand-in, or raw asyncio servers
for the byte-level cases). Pipelined requests answered in order, a stale pooled upstream
connection, answers that arrive in pieces, a client that goes away, the read timeout, the
keep-alive timeout, flow control and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from gateproxy.demo.standins import StandIn
from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app
from tests.support.gateways import MakeGateway
from tests.support.rawclient import Exchange, RawHandler, read_exchange

RawServer = Callable[[RawHandler], Awaitable[str]]
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: platform.test\r\n\r\n".encode()


async def gateway_to(make_gateway: MakeGateway, upstream_url: str, yaml: str = "",
                     tmp_path: Path | None = None) -> Gateway:
    """A gateway in front of `upstream_url` (docker-runner unreachable, so that
    /api/containers gets the gate's 503), with `yaml` as its config file."""
    path = None
    if yaml:
        assert tmp_path is not None
        file = tmp_path / "gateproxy.yaml"
        file.write_text(yaml)
        path = str(file)
    return await make_gateway(upstream_app.gateway_env(upstream_url), path)


async def connect(gateway: Gateway) -> Conn:
    return await asyncio.open_connection("127.0.0.1", gateway.port, limit=2**20)


async def ask(conn: Conn, target: str, timeout: float = 5) -> Exchange:
    reader, writer = conn
    writer.write(get(target))
    return await asyncio.wait_for(read_exchange(reader, "GET"), timeout)


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    return event.is_set()


# --- pipelining ---------------------------------------------------------------------------

async def test_pipelined_requests_are_answered_in_order(
        upstream: StandIn, make_gateway: MakeGateway) -> None:
    """A slow answer first, the gate's own 503, a POST with a body, a large and a chunked
    answer: each answer in the order of its request, whole, on one connection."""
    gateway = await gateway_to(make_gateway, upstream.url)
    conn = await connect(gateway)
    reader, writer = conn
    try:
        assert (await ask(conn, "/bytes/1")).status == 200  # a pooled upstream connection
        requests = [(get("/bytes/10"), "GET"), (get("/slow?delay=0.3"), "GET"),
                    (get("/bytes/20"), "GET"), (get("/api/containers"), "GET"),
                    (b"POST /echo HTTP/1.1\r\nHost: platform.test\r\nContent-Length: 2\r\n"
                     b"\r\nhi", "POST"),
                    (get("/bytes/300000"), "GET"), (get("/chunked/100"), "GET"),
                    (get("/bytes/30"), "GET"), (get("/reason"), "GET")]
        writer.write(b"".join(request for request, _ in requests))
        answers = [await asyncio.wait_for(read_exchange(reader, method), 5)
                   for _, method in requests]
    finally:
        writer.close()
    assert [a.status for a in answers] == [200, 200, 200, 503, 200, 200, 200, 200, 299]
    assert answers[0].body == upstream_app.pattern(10)
    assert answers[1].body == b"late"
    assert answers[2].body == upstream_app.pattern(20)
    assert orjson.loads(answers[3].body)["error"]["code"] == "docker_runner_not_ready"
    assert orjson.loads(answers[4].body)["bodySize"] == 2
    assert answers[5].body == upstream_app.pattern(300000)
    assert answers[6].body == upstream_app.pattern(100)
    assert answers[7].body == upstream_app.pattern(30)
    assert answers[8].status_line == "HTTP/1.1 299 Odd But Fine"


# --- a stale pooled upstream connection ---------------------------------------------------

def closes_the_second_request(connections: list[int]) -> RawHandler:
    """Answers a connection's first request, then closes it when the next one arrives,
    unanswered: an upstream closing an idle keep-alive connection just as it is reused."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        try:
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        writer.transport.abort()

    return handler


async def test_a_stale_pooled_connection_is_retried_on_a_fresh_one_for_a_safe_request(
        raw_server: RawServer, make_gateway: MakeGateway) -> None:
    connections: list[int] = []
    gateway = await gateway_to(make_gateway, await raw_server(closes_the_second_request(
        connections)))
    conn = await connect(gateway)
    try:
        for _ in range(3):
            answer = await ask(conn, "/")
            assert (answer.status, answer.body) == (200, b"ok")
    finally:
        conn[1].close()
    # Each reuse met the close, and the GET was sent again on a new connection.
    assert len(connections) == 3


@pytest.mark.parametrize("request_bytes", [
    b"POST / HTTP/1.1\r\nHost: platform.test\r\nContent-Length: 0\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: platform.test\r\nContent-Length: 4\r\n\r\ndata",
], ids=["POST", "PUT-with-a-body"])
async def test_a_stale_pooled_connection_is_not_retried_for_an_unsafe_request(
        request_bytes: bytes, raw_server: RawServer, make_gateway: MakeGateway) -> None:
    """A request that is not safe to repeat, or has a body, is sent once: the 502."""
    connections: list[int] = []
    gateway = await gateway_to(make_gateway, await raw_server(closes_the_second_request(
        connections)))
    conn = await connect(gateway)
    reader, writer = conn
    try:
        assert (await ask(conn, "/")).body == b"ok"
        writer.write(request_bytes)
        answer = await asyncio.wait_for(read_exchange(reader, "POST"), 5)
    finally:
        writer.close()
    assert answer.status == 502
    assert orjson.loads(answer.body)["error"]["code"] == "upstream_unavailable"
    assert len(connections) == 1  # not sent a second time


async def test_an_answer_before_the_whole_body_does_not_reuse_the_upstream_connection(
        raw_server: RawServer, make_gateway: MakeGateway) -> None:
    """The upstream answers a POST before its body is all sent: that connection is out of
    step, and the next request goes on a new one."""
    connections: list[int] = []

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    gateway = await gateway_to(make_gateway, await raw_server(early))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: platform.test\r\nContent-Length: 5000\r\n\r\n"
                     + b"x" * 1000)
        first = await asyncio.wait_for(read_exchange(reader, "POST"), 5)
    finally:
        writer.close()
    assert first.status == 413
    second = await ask(await connect(gateway), "/")
    assert second.status == 413
    assert len(connections) == 2


# --- answers in pieces --------------------------------------------------------------------

def in_pieces(pieces: list[bytes]) -> RawHandler:
    """Answers every request with `pieces`, written one at a time, a little apart."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.02)

    return handler


@pytest.mark.parametrize("pieces", [
    [b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 11\r\nX-A: 1\r\n", b"\r\nhello world"],
    [b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhel", b"lo ", b"world"],
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
     b"6\r\n world\r\n", b"0\r\n\r\n"],
    [b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"],
], ids=["head-in-pieces", "body-in-pieces", "chunks-in-pieces", "informational-first"])
async def test_an_answer_in_several_pieces_arrives_whole(
        pieces: list[bytes], raw_server: RawServer, make_gateway: MakeGateway) -> None:
    gateway = await gateway_to(make_gateway, await raw_server(in_pieces(pieces)))
    conn = await connect(gateway)
    try:
        answers = [await ask(conn, target) for target in ("/a", "/b", "/c")]
    finally:
        conn[1].close()
    assert [(a.status, a.body) for a in answers] == [(200, b"hello world")] * 3


# --- a client that goes away --------------------------------------------------------------

def holds_the_second_request(got: asyncio.Event, closed: asyncio.Event) -> RawHandler:
    """Answers a connection's first request; the second gets no answer, and `closed` is
    set when the proxy ends the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        got.set()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        closed.set()

    return handler


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset instead of a FIN."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("leaves", ["close", "reset"])
async def test_a_client_that_goes_away_before_its_answer_closes_the_upstream_connection(
        leaves: str, raw_server: RawServer, make_gateway: MakeGateway) -> None:
    """Closed (a FIN, as asyncio's close and abort both send) or reset while the proxy
    waits for the upstream's answer: the upstream request ends, its connection closed."""
    got, closed = asyncio.Event(), asyncio.Event()
    gateway = await gateway_to(make_gateway, await raw_server(holds_the_second_request(
        got, closed)))
    conn = await connect(gateway)
    assert (await ask(conn, "/first")).body == b"ok"
    conn[1].write(get("/second"))  # on the pooled upstream connection
    await asyncio.wait_for(got.wait(), 5)
    if leaves == "close":
        conn[1].close()
    else:
        reset(conn[1])
    assert await wait_for_event(closed, 5), (
        f"the upstream connection stayed open after the client's {leaves}")


async def test_a_client_that_closes_mid_answer_ends_the_upstream_request(
        upstream: StandIn, make_gateway: MakeGateway) -> None:
    """(The abort is in test_proxy_streams.py; this one is a plain close.)"""
    gateway = await gateway_to(make_gateway, upstream.url)
    before = upstream_app.ENDLESS_ACTIVE[0]
    reader, writer = await connect(gateway)
    writer.write(get("/endless"))
    await reader.readexactly(100_000)
    assert upstream_app.ENDLESS_ACTIVE[0] == before + 1
    writer.close()
    for _ in range(100):
        if upstream_app.ENDLESS_ACTIVE[0] == before:
            break
        await asyncio.sleep(0.02)
    assert upstream_app.ENDLESS_ACTIVE[0] == before


# --- timeouts -----------------------------------------------------------------------------

async def test_a_read_timeout_on_a_pooled_connection_is_a_504_and_the_client_goes_on(
        upstream: StandIn, make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = await gateway_to(make_gateway, upstream.url,
                               "upstream: {read_timeout_ms: 300}\n", tmp_path)
    conn = await connect(gateway)
    try:
        assert (await ask(conn, "/bytes/1")).status == 200
        answer = await ask(conn, "/slow?delay=2")
        # The client's connection goes on.
        assert (await ask(conn, "/bytes/5")).body == upstream_app.pattern(5)
    finally:
        conn[1].close()
    assert answer.status == 504
    assert answer.body == (b'{"error":{"code":"upstream_timeout","message":'
                           b'"no response from the upstream within 300 ms"}}')


async def test_keep_alive_is_not_cut_during_a_forward_and_closes_an_idle_connection(
        upstream: StandIn, make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = await gateway_to(make_gateway, upstream.url,
                               "limits: {keepalive_timeout_ms: 300}\n", tmp_path)
    conn = await connect(gateway)
    try:
        for target in ("/slow?delay=0.5", "/bytes/10"):  # longer than keep-alive, then not
            assert (await ask(conn, target, timeout=3)).status == 200
        # Idle for longer than keep-alive: the proxy closes the connection.
        assert await asyncio.wait_for(conn[0].read(), 2) == b""
    finally:
        conn[1].close()


# --- flow control and shutdown ------------------------------------------------------------

async def test_a_large_download_to_a_slow_reader_arrives_whole(
        upstream: StandIn, make_gateway: MakeGateway) -> None:
    gateway = await gateway_to(make_gateway, upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port, limit=2**16)
    try:
        writer.write(get("/bytes/3000000"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: 3000000" in head
        body = bytearray()
        while len(body) < 3_000_000:
            body += await asyncio.wait_for(reader.read(65536), 5)
            if len(body) < 1_000_000:
                await asyncio.sleep(0.002)  # slower than the upstream: flow control
        # The same connection takes the next request.
        writer.write(get("/bytes/10"))
        assert (await read_exchange(reader, "GET")).body == upstream_app.pattern(10)
    finally:
        writer.close()
    assert bytes(body) == upstream_app.pattern(3_000_000)


async def test_shutdown_lets_a_forward_in_flight_finish(upstream: StandIn) -> None:
    gateway = await upstream_app.start_gateway(upstream.url)
    stopped = False
    conn = await connect(gateway)
    try:
        assert (await ask(conn, "/bytes/1")).status == 200  # a pooled upstream connection
        conn[1].write(get("/slow?delay=0.5"))
        await asyncio.sleep(0.2)
        await gateway.stop()
        stopped = True
        answer = await asyncio.wait_for(read_exchange(conn[0], "GET"), 5)
    finally:
        conn[1].close()
        if not stopped:
            await gateway.stop()
    assert (answer.status, answer.body) == (200, b"late")
