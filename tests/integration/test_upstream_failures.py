"""The upstream client (gateproxy/engine/upstream.py `Pool`) against broken upstreams (raw
servers on 127.0.0.1): each failure becomes its UpstreamError through the one error map
(gateproxy/upstream/interface.py `failure`), with its code and its message, before the
answer's head and within its body."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import pytest

from gateproxy.engine.flow import Chunks
from gateproxy.engine.upstream import Pool
from gateproxy.upstream.interface import TIMEOUT, UNAVAILABLE, UpstreamError
from gateproxy.upstream.reconnect import Reconnector
from tests.support.ports import free_port, unaccepting

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Body = Literal["none", "whole", "streamed"]
TIMEOUT_MS = 300


async def _head(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset instead of a FIN."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                struct.pack("ii", 1, 0))
    writer.transport.abort()


async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _head(reader)
    writer.close()


async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _head(reader)
    _reset(writer)


async def is_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _head(reader)
    await asyncio.sleep(2)


async def cuts_the_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    await writer.drain()
    writer.close()


async def stalls_in_the_body(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
    await _head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    await writer.drain()
    await asyncio.sleep(2)


async def is_not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _head(reader)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(2)


async def breaks_its_chunks(reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
    await _head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
    await writer.drain()
    await asyncio.sleep(2)


CLOSED = "the upstream is unavailable: the upstream closed the connection"
# handler, method, its body, code, message: the whole message, or (ending in "...") how
# it starts, where the rest is the exception's own text.
CASES: dict[str, tuple[Handler, str, Body, str, str]] = {
    "closed without an answer": (
        closes, "GET", "none", UNAVAILABLE, CLOSED),
    "closed without an answer to a POST": (
        closes, "POST", "none", UNAVAILABLE, CLOSED),
    "closed without an answer to a body": (
        closes, "PUT", "whole", UNAVAILABLE, CLOSED),
    "closed without an answer to a streamed body": (
        closes, "PUT", "streamed", UNAVAILABLE, CLOSED),
    "reset without an answer": (
        resets, "GET", "none", UNAVAILABLE, "the upstream is unavailable: ..."),
    "no answer in time": (
        is_silent, "GET", "none", TIMEOUT,
        f"no response from the upstream within {TIMEOUT_MS} ms"),
    "no answer in time to a body": (
        is_silent, "PUT", "whole", TIMEOUT,
        f"no response from the upstream within {TIMEOUT_MS} ms"),
    "a body cut short": (
        cuts_the_body, "GET", "none", UNAVAILABLE,
        "the upstream broke off: the upstream closed the connection"),
    "a body that stalls": (
        stalls_in_the_body, "GET", "none", TIMEOUT, "the upstream stalled mid-response"),
    "an answer that is not HTTP": (
        is_not_http, "GET", "none", UNAVAILABLE, "the upstream sent a malformed answer..."),
    "a chunk that is not HTTP": (
        breaks_its_chunks, "GET", "none", UNAVAILABLE,
        "the upstream sent a malformed answer..."),
}


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., Pool]]:
    made: list[Pool] = []

    def make(url: str, connect_timeout_ms: int = 2000) -> Pool:
        pool = Pool(url, connect_timeout_ms, TIMEOUT_MS,
                    Reconnector(url, connect_timeout_ms, 0, 1))
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()


async def _streamed(body: Chunks, data: bytes) -> None:
    await asyncio.sleep(0.05)
    body.feed(data)
    await asyncio.sleep(0.05)
    body.end()


async def _failure(pool: Pool, method: str = "GET", body: Body = "none") -> tuple[str, str]:
    """The UpstreamError a request meets, sent or while its answer's body is read."""
    fields = [(b"Host", b"upstream.test")]
    source = None
    feeding = None
    if body != "none":
        source = Chunks(lambda: None, lambda: None)
        fields.append((b"Content-Length", b"4"))
        if body == "whole":
            source.feed(b"data")
            source.end()
        else:
            feeding = asyncio.ensure_future(_streamed(source, b"data"))
    try:
        async with asyncio.timeout(5):
            answer = await pool.fetch(method, "/", fields, source)
            try:
                async for _ in answer.iter_chunks():
                    pass
            finally:
                answer.close()
    except UpstreamError as exc:
        return exc.code, exc.message
    finally:
        if feeding is not None:
            feeding.cancel()
    raise AssertionError("no UpstreamError")


def _matches(message: str, expected: str) -> bool:
    if expected.endswith("..."):
        return message.startswith(expected[:-3]) and len(message) > len(expected) - 3
    return message == expected


@pytest.mark.parametrize("case", list(CASES))
async def test_each_broken_upstream_is_its_upstream_error(
        case: str, raw_server: Callable[[Handler], Awaitable[str]],
        pools: Callable[..., Pool]) -> None:
    handler, method, body, code, message = CASES[case]
    got = await _failure(pools(await raw_server(handler)), method, body)
    assert got[0] == code and _matches(got[1], message), got


async def test_a_refused_connection_is_upstream_unavailable(
        pools: Callable[..., Pool]) -> None:
    code, message = await _failure(pools(f"http://127.0.0.1:{free_port()}"))
    assert code == UNAVAILABLE
    assert message.startswith("the upstream is unavailable: ")
    assert "Connect call failed" in message


async def test_a_connection_not_accepted_in_time_is_upstream_unavailable(
        pools: Callable[..., Pool]) -> None:
    with unaccepting() as (port, _):
        assert await _failure(pools(f"http://127.0.0.1:{port}", 200)) == (
            UNAVAILABLE, "the upstream did not accept a connection in time")


async def test_a_closed_pool_refuses_new_requests(pools: Callable[..., Pool]) -> None:
    pool = pools(f"http://127.0.0.1:{free_port()}")
    await pool.close()
    assert await _failure(pool) == (UNAVAILABLE, "the proxy is shutting down")
