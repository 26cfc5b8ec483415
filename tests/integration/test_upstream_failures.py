"""Both upstream clients against the same broken upstreams (raw servers on 127.0.0.1):
one error map, so the same failure is the same code and, where the exception's text is
the same, the same message."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol
from multidict import CIMultiDict

from gateproxy.aio.client import FastUpstream
from gateproxy.upstream.aiohttp_client import AiohttpUpstream
from gateproxy.upstream.interface import TIMEOUT, UNAVAILABLE, UpstreamClient, UpstreamError
from gateproxy.upstream.reconnect import Reconnector
from tests.support.ports import free_port, unaccepting

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
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


# handler, method, with a body, code, message (None: the exception's text differs between
# the clients, the message starts with `prefix`), prefix
CASES = {
    "closed without an answer": (closes, "GET", False, UNAVAILABLE,
                                 "the upstream is unavailable: Server disconnected", ""),
    "closed without an answer to a POST": (closes, "POST", False, UNAVAILABLE,
                                           "the upstream is unavailable: Server disconnected",
                                           ""),
    "closed without an answer to a body": (closes, "PUT", True, UNAVAILABLE,
                                           "the upstream is unavailable: Server disconnected",
                                           ""),
    "reset without an answer": (resets, "GET", False, UNAVAILABLE,
                                "the upstream is unavailable: [Errno 104] Connection reset by "
                                "peer", ""),
    "no answer in time": (is_silent, "GET", False, TIMEOUT,
                          f"no response from the upstream within {TIMEOUT_MS} ms", ""),
    "a body cut short": (cuts_the_body, "GET", False, UNAVAILABLE, None,
                         "the upstream broke off: Response payload is not completed"),
    "a body that stalls": (stalls_in_the_body, "GET", False, TIMEOUT,
                           "the upstream stalled mid-response", ""),
    "an answer that is not HTTP": (is_not_http, "GET", False, UNAVAILABLE, None,
                                   "the upstream is unavailable: 400, message"),
}


def _clients(url: str, connect_timeout_ms: int = 2000) -> list[UpstreamClient]:
    return [AiohttpUpstream(url, connect_timeout_ms, TIMEOUT_MS),
            FastUpstream(url, connect_timeout_ms, TIMEOUT_MS,
                         websockets=AiohttpUpstream(url, connect_timeout_ms, TIMEOUT_MS),
                         connects=Reconnector(url, connect_timeout_ms, 0, 1))]


async def _failure(client: UpstreamClient, method: str = "GET",
                   with_body: bool = False) -> tuple[str, str]:
    headers = CIMultiDict({"Host": "upstream.test"})
    body = None
    if with_body:
        loop = asyncio.get_running_loop()
        body = StreamReader(BaseProtocol(loop), 1 << 16, loop=loop)
        body.feed_data(b"data")
        body.feed_eof()
        headers["Content-Length"] = "4"
    try:
        async with asyncio.timeout(5):
            response = await client.send(method, "/", headers, body)
            try:
                async for _ in response.iter_chunks():
                    pass
            finally:
                response.close()
    except UpstreamError as exc:
        return exc.code, exc.message
    finally:
        await client.close()
    raise AssertionError(f"{type(client).__name__}: no UpstreamError")


@pytest.mark.parametrize("case", list(CASES))
async def test_both_clients_give_the_same_answer(
        case: str, raw_server: Callable[[Handler], Awaitable[str]]) -> None:
    handler, method, with_body, code, message, prefix = CASES[case]
    url = await raw_server(handler)
    for client in _clients(url):
        got = await _failure(client, method, with_body)
        if message is not None:
            assert got == (code, message), type(client).__name__
        else:
            assert got[0] == code and got[1].startswith(prefix), (type(client).__name__, got)


async def test_a_refused_connection_is_upstream_unavailable_from_both() -> None:
    for client in _clients(f"http://127.0.0.1:{free_port()}"):
        code, message = await _failure(client)
        assert code == UNAVAILABLE
        assert message.startswith("the upstream is unavailable: ")
        assert "Connect call failed" in message


async def test_a_connection_not_accepted_in_time_is_the_same_from_both() -> None:
    with unaccepting() as (port, _):
        for client in _clients(f"http://127.0.0.1:{port}", 200):
            assert await _failure(client) == (
                UNAVAILABLE, "the upstream did not accept a connection in time")
