"""The lean upstream client (gateproxy/aio/client.py, used with `fast_path: true`) against
real servers on 127.0.0.1: aiohttp applications for ordinary answers, raw asyncio servers
for the byte-level cases (close-delimited bodies, informational answers, connections
closed at the worst time)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from multidict import CIMultiDict

from gateproxy.aio import client as fastclient
from gateproxy.aio.client import FastResponse, FastUpstream
from gateproxy.upstream.aiohttp_client import AiohttpUpstream
from gateproxy.upstream.interface import UpstreamError, WebSocketUpstream
from gateproxy.upstream.reconnect import Reconnector
from tests.support.ports import free_port, unaccepting
from tests.support.rawclient import RawHandler

# --- servers ----------------------------------------------------------------------------


class Peers:
    """The client ports an upstream saw, one per TCP connection."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None and peer[1] not in self.ports:
            self.ports.append(peer[1])
        return await handler(request)  # type: ignore[no-any-return]


def upstream_app(peers: Peers) -> web.Application:
    async def small(_: web.Request) -> web.Response:
        return web.Response(text="hello", headers={"X-Seen": "yes"})

    async def chunked(_: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(_)
        for part in (b"one,", b"two,", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=bytes(range(256)) * 8192)  # 2 MiB

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=int(request.query.get("status", "204")))

    async def head_only(_: web.Request) -> web.Response:
        return web.Response(text="x" * 100)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "method": request.method, "target": request.raw_path, "size": len(body),
            "sha": hashlib.sha256(body).hexdigest(),
            "headers": [[k, v] for k, v in request.headers.items()],
        })

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.query.get("delay", "5")))
        return web.Response(text="late")

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "10"})
        await resp.prepare(request)
        await resp.write(b"12345")
        await asyncio.sleep(5)
        return resp

    app = web.Application(middlewares=[peers.record])
    app.router.add_get("/small", small)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/big", big)
    app.router.add_route("*", "/empty", empty)
    app.router.add_route("*", "/head", head_only)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stall", stall)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, Peers]]:
    peers = Peers()
    runner = web.AppRunner(upstream_app(peers), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", peers
    await runner.cleanup()




async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., FastUpstream]]:
    made: list[FastUpstream] = []

    def make(url: str, connect_timeout_ms: int = 2000, read_timeout_ms: int = 5000
             ) -> FastUpstream:
        client = FastUpstream(url, connect_timeout_ms, read_timeout_ms,
                              websockets=AiohttpUpstream(url, connect_timeout_ms,
                                                         read_timeout_ms),
                              connects=Reconnector(url, connect_timeout_ms, 0, 1))
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def body_of(response: FastResponse) -> bytes:
    return b"".join([chunk async for chunk in response.iter_chunks()])


def headers(**extra: str) -> CIMultiDict[str]:
    return CIMultiDict({"Host": "upstream.test", **extra})


# --- bodies and reuse -------------------------------------------------------------------


async def test_content_length_body_and_keep_alive_reuse(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, peers = upstream
    client = clients(url)
    for _ in range(3):
        resp = await client.send("GET", "/small", headers(), None)
        assert (resp.status, resp.reason) == (200, "OK")
        assert (b"X-Seen", b"yes") in resp.raw_headers
        assert await body_of(resp) == b"hello"
    assert len(peers.ports) == 1  # one connection, reused


async def test_whole_body_of_a_small_answer_returns_the_connection(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, peers = upstream
    client = clients(url)
    for _ in range(2):
        resp = await client.send("GET", "/small", headers(), None)
        for _ in range(50):  # the body may trail its head by a read
            if (body := resp.whole_body()) is not None:
                break
            await asyncio.sleep(0.01)
        assert body == b"hello"
    assert len(peers.ports) == 1


async def test_chunked_body_is_reassembled_and_the_connection_reused(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, peers = upstream
    client = clients(url)
    resp = await client.send("GET", "/chunked", headers(), None)
    assert resp.whole_body() is None  # not delimited by a Content-Length
    assert await body_of(resp) == b"one,two,three"
    assert await body_of(await client.send("GET", "/small", headers(), None)) == b"hello"
    assert len(peers.ports) == 1


async def test_large_body_streams_in_pieces(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, _ = upstream
    resp = await clients(url).send("GET", "/big", headers(), None)
    chunks = [chunk async for chunk in resp.iter_chunks()]
    assert b"".join(chunks) == bytes(range(256)) * 8192
    assert len(chunks) > 1


async def test_close_delimited_body_is_read_to_the_end_and_not_pooled(
        raw_server: Callable[[RawHandler], Awaitable[str]],
        clients: Callable[..., FastUpstream]) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"the end")
        writer.close()

    client = clients(await raw_server(handler))
    for _ in range(2):
        resp = await client.send("GET", "/", headers(), None)
        assert resp.whole_body() is None
        assert await body_of(resp) == b"until the end"
    assert connections == 2


@pytest.mark.parametrize(("method", "target"), [("HEAD", "/head"), ("GET", "/empty?status=204"),
                                                ("GET", "/empty?status=304")])
async def test_bodiless_answers_end_at_their_head_and_keep_the_connection(
        method: str, target: str, upstream: tuple[str, Peers],
        clients: Callable[..., FastUpstream]) -> None:
    url, peers = upstream
    client = clients(url)
    resp = await client.send(method, target, headers(), None)
    assert await body_of(resp) == b""
    if method == "HEAD":
        assert (b"Content-Length", b"100") in resp.raw_headers
    # The next answer on the same connection is read from its own first byte.
    assert await body_of(await client.send("GET", "/small", headers(), None)) == b"hello"
    assert len(peers.ports) == 1


async def test_informational_answers_are_skipped(
        raw_server: Callable[[RawHandler], Awaitable[str]],
        clients: Callable[..., FastUpstream]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    resp = await clients(await raw_server(handler)).send("GET", "/", headers(), None)
    assert resp.status == 201 and await body_of(resp) == b"ok"


async def test_a_body_cut_short_is_an_error_not_a_short_body(
        raw_server: Callable[[RawHandler], Awaitable[str]],
        clients: Callable[..., FastUpstream]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    resp = await clients(await raw_server(handler)).send("GET", "/", headers(), None)
    with pytest.raises(UpstreamError) as broke:
        await body_of(resp)
    assert broke.value.code == "upstream_unavailable"


# --- the request head -------------------------------------------------------------------


async def test_request_head_is_the_aiohttp_clients(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, _ = upstream
    client = clients(url)
    resp = await client.send("POST", "/echo?", CIMultiDict({"X-A": "1"}), None)
    echoed = json.loads(await body_of(resp))
    assert echoed["target"] == "/echo"  # an empty query is dropped, as yarl does
    names = [k for k, _ in echoed["headers"]]
    assert names[0] == "Host"  # added first when the client sent none
    assert ["Content-Length", "0"] in echoed["headers"]  # a bodiless POST says so


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, peers = upstream
    with pytest.raises(UpstreamError):
        await clients(url).send("GET", "/small", headers(**{"X-Evil": "a\r\nX-Injected: 1"}),
                                None)
    assert peers.ports == []


BodyStream = Callable[..., Awaitable[aiohttp.StreamReader]]


@pytest.fixture
async def body_stream() -> AsyncIterator[BodyStream]:
    """Request bodies as aiohttp's server hands them to the proxy: already complete, or
    fed part by part with `delay` seconds between parts."""
    feeders: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    async def make(parts: list[bytes], delay: float = 0.0) -> aiohttp.StreamReader:
        protocol = BaseProtocol(loop)
        protocol.transport = asyncio.Transport()  # a connected client, for StreamReader
        reader = aiohttp.StreamReader(protocol, 2**16, loop=loop)

        async def feed() -> None:
            for part in parts:
                await asyncio.sleep(delay)
                reader.feed_data(part)
            reader.feed_eof()

        if delay:
            feeders.append(loop.create_task(feed()))
        else:
            await feed()
        return reader

    yield make
    for task in feeders:
        task.cancel()


@pytest.mark.parametrize("delay", [0.0, 0.01], ids=["buffered", "streamed"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_request_bodies_arrive_whole(
        framing: str, delay: float, upstream: tuple[str, Peers],
        clients: Callable[..., FastUpstream], body_stream: BodyStream) -> None:
    url, peers = upstream
    parts = [b"a" * 1000, b"b" * 70000, b"c"]
    data = b"".join(parts)
    extra = {"Content-Length": str(len(data))} if framing == "length" else {}
    client = clients(url)
    resp = await client.send("PUT", "/echo", headers(**extra), await body_stream(parts, delay))
    echoed = json.loads(await body_of(resp))
    assert (echoed["size"], echoed["sha"]) == (len(data), hashlib.sha256(data).hexdigest())
    sent = {k.lower(): v for k, v in echoed["headers"]}
    assert ("transfer-encoding" in sent) == (framing == "chunked")
    # The connection is reusable after a complete upload.
    assert await body_of(await client.send("GET", "/small", headers(), None)) == b"hello"
    assert len(peers.ports) == 1


async def test_an_answer_before_the_whole_body_does_not_reuse_the_connection(
        raw_server: Callable[[RawHandler], Awaitable[str]],
        clients: Callable[..., FastUpstream], body_stream: BodyStream) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    client = clients(await raw_server(handler))
    body = await body_stream([b"x" * 1000] * 5, delay=0.05)
    resp = await client.send("POST", "/", headers(**{"Content-Length": "5000"}), body)
    assert resp.status == 413 and await body_of(resp) == b""
    resp = await client.send("GET", "/", headers(), None)
    assert resp.status == 413
    assert connections == 2


# --- stale pooled connections -----------------------------------------------------------


def closes_the_second_request(connections: list[int]) -> RawHandler:
    """Answers the first request of a connection, then closes it when the next arrives,
    without an answer: an upstream closing an idle keep-alive connection just as the
    proxy reuses it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        try:
            await read_head(reader)
        except asyncio.IncompleteReadError:
            return
        writer.transport.abort()

    return handler


async def test_a_stale_pooled_connection_is_retried_for_a_safe_request(
        raw_server: Callable[[RawHandler], Awaitable[str]],
        clients: Callable[..., FastUpstream]) -> None:
    connections: list[int] = []
    client = clients(await raw_server(closes_the_second_request(connections)))
    for _ in range(3):
        resp = await client.send("GET", "/", headers(), None)
        assert await body_of(resp) == b"ok"
    assert len(connections) >= 3


@pytest.mark.parametrize("with_body", [False, True])
async def test_a_stale_pooled_connection_is_not_retried_for_an_unsafe_request(
        with_body: bool, raw_server: Callable[[RawHandler], Awaitable[str]],
        clients: Callable[..., FastUpstream], body_stream: BodyStream) -> None:
    connections: list[int] = []
    client = clients(await raw_server(closes_the_second_request(connections)))
    assert await body_of(await client.send("GET", "/", headers(), None)) == b"ok"
    method, body, extra = ("PUT", await body_stream([b"data"]), {"Content-Length": "4"}) \
        if with_body else ("POST", None, {})
    with pytest.raises(UpstreamError) as failed:
        await client.send(method, "/", headers(**extra), body)
    assert failed.value.code == "upstream_unavailable"
    assert len(connections) == 1  # not sent a second time


async def test_idle_connections_expire_from_the_pool(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastclient, "POOL_IDLE_S", 0.05)
    url, peers = upstream
    client = clients(url)
    await body_of(await client.send("GET", "/small", headers(), None))
    await asyncio.sleep(0.1)
    await body_of(await client.send("GET", "/small", headers(), None))
    assert len(peers.ports) == 2


async def test_an_abandoned_answer_closes_its_connection(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, peers = upstream
    client = clients(url)
    resp = await client.send("GET", "/big", headers(), None)
    await resp.iter_chunks().__anext__()
    resp.close()
    await body_of(await client.send("GET", "/small", headers(), None))
    assert len(peers.ports) == 2


# --- failures and timeouts --------------------------------------------------------------


async def test_refused_connection_is_upstream_unavailable(
        clients: Callable[..., FastUpstream]) -> None:
    with pytest.raises(UpstreamError) as failed:
        await clients(f"http://127.0.0.1:{free_port()}").send("GET", "/", headers(), None)
    assert failed.value.code == "upstream_unavailable"


async def test_a_connection_not_accepted_in_time_is_upstream_unavailable(
        clients: Callable[..., FastUpstream]) -> None:
    with unaccepting() as (port, _):
        client = clients(f"http://127.0.0.1:{port}", connect_timeout_ms=200)
        with pytest.raises(UpstreamError) as failed:
            await client.send("GET", "/", headers(), None)
        assert failed.value.code == "upstream_unavailable"
        assert "in time" in failed.value.message


async def test_no_answer_within_the_read_timeout_is_upstream_timeout(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, _ = upstream
    with pytest.raises(UpstreamError) as failed:
        await clients(url, read_timeout_ms=200).send("GET", "/slow", headers(), None)
    assert failed.value.code == "upstream_timeout"


async def test_a_body_that_stalls_past_the_read_timeout_is_upstream_timeout(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, _ = upstream
    resp = await clients(url, read_timeout_ms=200).send("GET", "/stall", headers(), None)
    with pytest.raises(UpstreamError) as failed:
        await body_of(resp)
    assert failed.value.code == "upstream_timeout"


async def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, peers = upstream
    client = clients(url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await client.send("GET", "/slow?delay=1", headers(), None)
    assert await body_of(await client.send("GET", "/small", headers(), None)) == b"hello"
    assert len(peers.ports) == 2


class WebSockets:
    """A stand-in for the client FastUpstream hands WebSocket handshakes to."""

    def __init__(self) -> None:
        self.websocket = object()
        self.opened: list[tuple[Any, ...]] = []
        self.closed = False

    async def open_websocket(self, *args: Any) -> Any:
        self.opened.append(args)
        return self.websocket

    async def close(self) -> None:
        self.closed = True


async def test_websockets_go_to_the_client_given_for_them_and_close_with_this_one() -> None:
    websockets = WebSockets()
    client = FastUpstream("http://127.0.0.1:1", 2000, 5000, websockets=websockets,
                          connects=Reconnector("http://127.0.0.1:1", 2000, 0, 1))
    assert isinstance(client, WebSocketUpstream)
    answer = await client.open_websocket("/ws", headers(), ("chat",), True, 1024)
    assert answer is websockets.websocket
    assert websockets.opened == [("/ws", headers(), ("chat",), True, 1024)]
    await client.close()
    assert websockets.closed


async def test_a_closed_client_refuses_new_requests(
        upstream: tuple[str, Peers], clients: Callable[..., FastUpstream]) -> None:
    url, _ = upstream
    client = clients(url)
    await body_of(await client.send("GET", "/small", headers(), None))
    await client.close()
    with pytest.raises(UpstreamError):
        await client.send("GET", "/small", headers(), None)
