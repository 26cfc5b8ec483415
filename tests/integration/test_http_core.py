"""What the proxy port's HTTP core must get right on its own, each judged from outside: raw
sockets and real servers on 127.0.0.1 on both sides of a real Gateway.

- a request trailer never becomes a header of anything, and a chunked request no longer
  ends the connection;
- an upstream answer that breaks llhttp's framing gives the client a 502 at once;
- pipelined requests are answered in order behind a slow one;
- a slow reader at either end holds the other end back (bounded bytes in flight);
- a WebSocket session with permessage-deflate passes through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
import websockets
from aiohttp import web

from tests.support.gateways import MakeGateway, env_for
from tests.support.ports import free_port


class Recording:
    """A raw upstream that records every byte it is sent and answers each request head it
    sees with `answer`."""

    def __init__(self, answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") -> None:
        self.answer = answer
        self.received = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending = b""
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.received += data
                pending += data
                # One answer per request: a bodiless GET ends its head with a blank line,
                # a chunked body with its last chunk and the trailer section's blank line.
                while True:
                    head_end = pending.find(b"\r\n\r\n")
                    if head_end < 0:
                        break
                    head = pending[:head_end]
                    rest = pending[head_end + 4:]
                    if b"transfer-encoding: chunked" in head.lower():
                        end = rest.find(b"0\r\n\r\n")
                        if end < 0:
                            break
                        rest = rest[end + 5:]
                    pending = rest
                    writer.write(self.answer)
                    await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def recording() -> AsyncIterator[Recording]:
    rec = Recording()
    yield rec
    await rec.stop()


async def _gateway(make_gateway: MakeGateway, upstream_url: str, **extra: str) -> int:
    """A gateway in front of a raw upstream (env_for reads only its `url`)."""
    upstream = SimpleNamespace(url=upstream_url)
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}",  # type: ignore[arg-type]
                                         **extra))
    return gateway.port


async def _read_answers(reader: asyncio.StreamReader, count: int, timeout: float = 5.0
                        ) -> list[bytes]:
    """`count` whole answers (Content-Length framed) from the client's socket."""
    answers = []
    async with asyncio.timeout(timeout):
        for _ in range(count):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            answers.append(head + await reader.readexactly(length))
    return answers


async def test_a_trailer_never_becomes_a_header_and_the_connection_goes_on(
        recording: Recording, make_gateway: MakeGateway) -> None:
    port = await _gateway(make_gateway, await recording.start())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunked = (b"POST /api/threads HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\nX-Trailer-Smuggled: yes\r\nHost: evil\r\n\r\n")
    after = b"GET /api/next HTTP/1.1\r\nHost: a\r\n\r\n"
    writer.write(chunked + after)  # pipelined in one packet, behind the trailer section
    answers = await _read_answers(reader, 2)
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    assert not any(b"connection: close" in a.lower() for a in answers)
    # The same connection takes a third request: chunked bodies no longer end it.
    writer.write(b"GET /api/third HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await _read_answers(reader, 1))[0].startswith(b"HTTP/1.1 200 ")
    writer.close()
    sent = bytes(recording.received)
    assert b"x-trailer-smuggled" not in sent.lower()
    assert b"evil" not in sent
    assert sent.count(b"\r\nHost: a\r\n") == 3


async def test_a_malformed_chunk_from_the_upstream_is_a_502_at_once(
        recording: Recording, make_gateway: MakeGateway) -> None:
    recording.answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"zz-not-a-size\r\nhello\r\n")
    port = await _gateway(make_gateway, await recording.start())
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/threads HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = (await _read_answers(reader, 1, timeout=10))[0]
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert b"upstream_unavailable" in answer
    assert time.monotonic() - started < 5  # far within the read timeout (300 s)
    writer.close()


async def test_pipelined_requests_are_answered_in_order_behind_a_slow_one(
        start_standin: object, make_gateway: MakeGateway) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(text="slow")

    async def fast(request: web.Request) -> web.Response:
        return web.Response(text="fast " + request.path)

    app = web.Application()
    app.router.add_get("/api/slow", slow)
    app.router.add_get("/api/{name}", fast)
    upstream = await start_standin(app)  # type: ignore[operator]
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /api/slow HTTP/1.1\r\nHost: a\r\n\r\n"
                 b"GET /api/one HTTP/1.1\r\nHost: a\r\n\r\n"
                 b"GET /api/two HTTP/1.1\r\nHost: a\r\n\r\n")
    answers = await _read_answers(reader, 3)
    assert [a.rsplit(b"\r\n\r\n", 1)[1] for a in answers] == [
        b"slow", b"fast /api/one", b"fast /api/two"]
    writer.close()


BIG = 48 * 1024 * 1024
BOUND = 16 * 1024 * 1024  # kernel buffers on both hops and the proxy's own, with room


async def test_a_client_that_reads_slowly_holds_the_upstream_back(
        make_gateway: MakeGateway) -> None:
    sent = 0
    stalled = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
        piece = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            while sent < BIG:
                writer.write(piece)
                sent += len(piece)
                try:
                    await asyncio.wait_for(writer.drain(), 1.0)
                except TimeoutError:
                    stalled.set()  # the proxy no longer reads: held back
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    port = await _gateway(make_gateway, url)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=65536)
    writer.write(b"GET /api/big HTTP/1.1\r\nHost: a\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    # The client reads nothing: the upstream must be held back long before BIG.
    async with asyncio.timeout(20):
        await stalled.wait()
    assert sent < BOUND
    # Then it reads it all, and gets every byte.
    got = 0
    async with asyncio.timeout(30):
        while got < BIG:
            got += len(await reader.read(1 << 20))
    assert got == BIG
    writer.close()
    server.close()


async def test_an_upstream_that_reads_slowly_holds_the_client_back(
        make_gateway: MakeGateway) -> None:
    reading = asyncio.Event()
    received = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        await reading.wait()  # reads nothing of the body until told
        while received < BIG:
            data = await reader.read(1 << 20)
            if not data:
                break
            received += len(data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    port = await _gateway(make_gateway, url)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % BIG)
    piece = b"y" * 65536
    written = 0
    while written < BIG:
        writer.write(piece)
        written += len(piece)
        try:
            await asyncio.wait_for(writer.drain(), 1.0)
        except TimeoutError:
            break  # held back
    assert written < BOUND
    reading.set()
    while written < BIG:
        writer.write(piece)
        written += len(piece)
        await writer.drain()
    answer = (await _read_answers(reader, 1, timeout=30))[0]
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert received == BIG
    writer.close()
    server.close()


async def test_a_permessage_deflate_session_passes_unchanged(
        make_gateway: MakeGateway) -> None:
    seen: dict[str, str | None] = {}

    async def echo(ws: websockets.ServerConnection) -> None:
        seen["offered"] = ws.request.headers.get("Sec-WebSocket-Extensions")
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(echo, "127.0.0.1", 0, compression="deflate") as server:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        port = await _gateway(make_gateway, url)
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/echo",
                                      compression="deflate") as client:
            agreed = client.response.headers.get("Sec-WebSocket-Extensions")
            text = "compress me " * 1000
            await client.send(text)
            assert await client.recv() == text
            await client.send(b"\x00\x01binary" * 100)
            assert await client.recv() == b"\x00\x01binary" * 100
    # The offer reached the server as the client wrote it, and the server's agreement
    # reached the client as the server wrote it: compression is end to end.
    assert seen["offered"] is not None and "permessage-deflate" in seen["offered"]
    assert agreed is not None and agreed.startswith("permessage-deflate")
