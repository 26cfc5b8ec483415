"""Forwards carried by callbacks (gateproxy/aio/fastpath.py `_Callbacks`): a plain GET on
an idle pooled upstream connection is answered from the upstream protocol's callback,
without a task, when its whole answer has arrived; everything else is handed, half
done, to the task path. The edges of that hand-over, against real servers on 127.0.0.1:
which forwards needed a task is recorded, so that each test knows which way it went."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateproxy.aio import fastpath
from gateproxy.demo.standins import StandIn
from gateproxy.http_rules.actions import ForwardPlan
from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app
from tests.support.rawclient import RawHandler, read_exchange

# (target, handed over by callbacks) for each forward a task carried.
Tasks = list[tuple[str, bool]]


@pytest.fixture
def tasks(monkeypatch: pytest.MonkeyPatch) -> Tasks:
    started: Tasks = []
    forward = fastpath.FastPathHandler._forward

    async def recording(self: fastpath.FastPathHandler, message: Any, plan: ForwardPlan,
                        begun: Any) -> None:
        started.append((plan.target, begun is not None))
        await forward(self, message, plan, begun)

    monkeypatch.setattr(fastpath.FastPathHandler, "_forward", recording)
    return started


@pytest.fixture
async def gateways() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def start(upstream_url: str, yaml: str | None = None) -> Gateway:
        gateway = await upstream_app.start_gateway(upstream_url, yaml, fast_path=True)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop()


def get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: platform.test\r\n\r\n".encode()


async def connect(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gateway.port, limit=2**20)


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str,
              timeout: float = 5) -> Any:
    writer.write(get(target))
    return await asyncio.wait_for(read_exchange(reader, "GET"), timeout)


async def test_small_answers_on_pooled_connections_need_no_task(
        upstream: StandIn, gateways: Callable[..., Awaitable[Gateway]], tasks: Tasks) -> None:
    gateway = await gateways(upstream.url)
    reader, writer = await connect(gateway)
    try:
        for size in (10, 0, 2000, 10):
            answer = await ask(reader, writer, f"/bytes/{size}")
            assert answer.status == 200 and answer.body == upstream_app.pattern(size)
    finally:
        writer.close()
    # Only the first needed a connect, and so a task.
    assert tasks == [("/bytes/10", False)]


async def test_pipelined_gets_are_answered_in_order(
        upstream: StandIn, gateways: Callable[..., Awaitable[Gateway]], tasks: Tasks) -> None:
    gateway = await gateways(upstream.url)
    reader, writer = await connect(gateway)
    try:
        assert (await ask(reader, writer, "/bytes/1")).status == 200  # a pooled connection
        targets = ["/bytes/10", "/slow?delay=0.2", "/bytes/20", "/api/containers",
                   "/bytes/300000", "/chunked/100", "/bytes/30", "/reason"]
        writer.write(b"".join(get(target) for target in targets))
        answers = [await asyncio.wait_for(read_exchange(reader, "GET"), 5) for _ in targets]
    finally:
        writer.close()
    assert [a.status for a in answers] == [200, 200, 200, 503, 200, 200, 200, 299]
    assert answers[0].body == upstream_app.pattern(10)
    assert answers[1].body == b"late"
    assert answers[2].body == upstream_app.pattern(20)
    assert answers[4].body == upstream_app.pattern(300000)
    assert answers[6].body == upstream_app.pattern(30)
    # The large body and the chunked answer were handed to a task; the small ones, the
    # late one included, were not.
    assert tasks == [("/bytes/1", False), ("/bytes/300000", True), ("/chunked/100", True)]


def closes_the_second_request(connections: list[int]) -> RawHandler:
    """Answers a connection's first request, then closes it when the next one arrives,
    unanswered: an upstream closing an idle keep-alive connection as it is reused."""

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


async def test_a_pooled_connection_closed_as_it_is_reused_is_retried_on_a_fresh_one(
        raw_server: Callable[[RawHandler], Awaitable[str]],
        gateways: Callable[..., Awaitable[Gateway]], tasks: Tasks) -> None:
    connections: list[int] = []
    gateway = await gateways(await raw_server(closes_the_second_request(connections)))
    reader, writer = await connect(gateway)
    try:
        for _ in range(3):
            answer = await ask(reader, writer, "/")
            assert (answer.status, answer.body) == (200, b"ok")
    finally:
        writer.close()
    # Each reuse met the close, and was sent again on a new connection.
    assert len(connections) == 3
    assert tasks == [("/", False), ("/", True), ("/", True)]


async def test_a_read_timeout_while_waiting_in_callbacks_is_the_usual_504(
        upstream: StandIn, gateways: Callable[..., Awaitable[Gateway]], tasks: Tasks,
        tmp_path: Path) -> None:
    path = tmp_path / "gateproxy.yaml"
    path.write_text("upstream: {read_timeout_ms: 300}\n")
    gateway = await gateways(upstream.url, str(path))
    reader, writer = await connect(gateway)
    try:
        assert (await ask(reader, writer, "/bytes/1")).status == 200
        answer = await ask(reader, writer, "/slow?delay=2")
        # The connection goes on.
        assert (await ask(reader, writer, "/bytes/5")).body == upstream_app.pattern(5)
    finally:
        writer.close()
    assert answer.status == 504
    assert answer.body == (b'{"error":{"code":"upstream_timeout","message":'
                           b'"no response from the upstream within 300 ms"}}')
    # The timed-out connection was dropped: the next request needed a connect.
    assert tasks == [("/bytes/1", False), ("/slow?delay=2", True), ("/bytes/5", False)]


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


async def test_a_client_that_goes_away_closes_its_upstream_connection(
        raw_server: Callable[[RawHandler], Awaitable[str]],
        gateways: Callable[..., Awaitable[Gateway]], tasks: Tasks) -> None:
    got, closed = asyncio.Event(), asyncio.Event()
    gateway = await gateways(await raw_server(holds_the_second_request(got, closed)))
    reader, writer = await connect(gateway)
    assert (await ask(reader, writer, "/first")).body == b"ok"
    writer.write(get("/second"))
    await asyncio.wait_for(got.wait(), 5)
    writer.close()
    await asyncio.wait_for(closed.wait(), 5)
    assert tasks == [("/first", False)]


def in_pieces(pieces: list[bytes]) -> RawHandler:
    """Answers every request with `pieces`, written one at a time, a little apart."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.02)

    return handler


@pytest.mark.parametrize(("pieces", "handed_over"), [
    # The head in pieces, the body with its end: whole when the head is.
    ([b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 11\r\nX-A: 1\r\n", b"\r\nhello world"], False),
    # The body in pieces: the head goes to a task, which finishes the answer.
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhel", b"lo ", b"world"], True),
    # An informational answer first, then the final one.
    ([b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n",
      b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"], False),
])
async def test_an_answer_in_several_pieces_arrives_whole(
        pieces: list[bytes], handed_over: bool,
        raw_server: Callable[[RawHandler], Awaitable[str]],
        gateways: Callable[..., Awaitable[Gateway]], tasks: Tasks) -> None:
    gateway = await gateways(await raw_server(in_pieces(pieces)))
    reader, writer = await connect(gateway)
    try:
        answers = [await ask(reader, writer, target) for target in ("/a", "/b", "/c")]
    finally:
        writer.close()
    assert [(a.status, a.body) for a in answers] == [(200, b"hello world")] * 3
    assert tasks == [("/a", False), *([("/b", True), ("/c", True)] if handed_over else [])]


async def test_shutdown_lets_a_forward_in_callbacks_finish(
        upstream: StandIn, tasks: Tasks) -> None:
    gateway = await upstream_app.start_gateway(upstream.url, fast_path=True)
    reader, writer = await connect(gateway)
    try:
        assert (await ask(reader, writer, "/bytes/1")).status == 200
        writer.write(get("/slow?delay=0.5"))
        await asyncio.sleep(0.2)
        await gateway.stop()
        answer = await asyncio.wait_for(read_exchange(reader, "GET"), 5)
    finally:
        writer.close()
    assert (answer.status, answer.body) == (200, b"late")
    assert tasks == [("/bytes/1", False)]
