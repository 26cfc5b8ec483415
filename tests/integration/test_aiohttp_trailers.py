"""aiohttp's own request parser and trailer fields: the reason for a workaround.

aiohttp's C request parser (3.14) keeps the last trailer field of a chunked request and
hands it to the next request on the same connection as a header of its own. gateproxy
therefore ends every client connection after a request that came with a
Transfer-Encoding (`checks.ends_connection`). This test runs a plain aiohttp
application, nothing of gateproxy's, and asserts that the leak is still there: when an
aiohttp release fixes its parser, this test fails, and the workaround can go (with this
test, and the line in docs/headers.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy

PIPELINED = (b"POST /one HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"1\r\nZ\r\n0\r\nAuthorization: Bearer stolen\r\n\r\n"
             b"GET /two HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")


@pytest.fixture
async def plain_app() -> AsyncIterator[tuple[int, list[tuple[str, dict[str, str]]]]]:
    seen: list[tuple[str, dict[str, str]]] = []

    async def record(request: web.Request) -> web.Response:
        await request.read()
        seen.append((request.path, dict(request.headers)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield port, seen
    await runner.cleanup()


async def test_aiohttps_c_parser_still_leaks_a_trailer_into_the_next_request(
        plain_app: tuple[int, list[tuple[str, dict[str, str]]]]) -> None:
    if HttpRequestParser is HttpRequestParserPy:
        pytest.skip("aiohttp runs without its C extension here (AIOHTTP_NO_EXTENSIONS)")
    port, seen = plain_app
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PIPELINED)
    async with asyncio.timeout(5):
        await reader.read()  # until the server closes after /two
    writer.close()
    assert [path for path, _ in seen] == ["/one", "/two"]
    assert "Authorization" not in seen[0][1]
    assert seen[1][1].get("Authorization") == "Bearer stolen", (
        "aiohttp no longer leaks a trailer field into the next request: the workaround "
        "(gateproxy/http_rules/request_checks.py ends_connection) and this test can go")
