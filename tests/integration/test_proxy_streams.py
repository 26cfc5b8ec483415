"""Forwarding of streams and failures, against real servers on 127.0.0.1: SSE as it is
produced, bodies without a body, 502 and 504, cut and stalled streams, abandoned
requests that must not leak, one pooled upstream connection."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateproxy import config
from gateproxy.demo.standins import StandIn
from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app
from tests.support.rawclient import exchange


@pytest.fixture
async def gateway(upstream: StandIn) -> AsyncIterator[Gateway]:
    gw = await upstream_app.start_gateway(upstream.url)
    yield gw
    await gw.stop()


@pytest.fixture
async def impatient(upstream: StandIn, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway whose read timeout is 300 ms."""
    path = tmp_path / "gateproxy.yaml"
    path.write_text("upstream: {read_timeout_ms: 300, connect_timeout_ms: 1000}\n")
    gw = Gateway(config.load(str(path), upstream_app.gateway_env(upstream.url)))
    await gw.start()
    yield gw
    await gw.stop()


def base(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


async def test_sse_events_arrive_as_they_are_produced(gateway: Gateway) -> None:
    arrivals: list[float] = []
    async with aiohttp.ClientSession(auto_decompress=False) as http, \
            http.get(f"{base(gateway)}/sse?count=4&interval=0.3",
                     headers={"Accept": "text/event-stream",
                              "Accept-Encoding": "gzip, br"}) as resp:
        started = time.monotonic()
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert "Content-Encoding" not in resp.headers
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                _, buffer = buffer.split(b"\n\n", 1)
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    # Each event comes when the upstream writes it, not with the end of the stream.
    assert arrivals[0] < 0.25, arrivals
    assert arrivals[-1] - arrivals[0] > 0.6, arrivals


async def test_bodyless_answers_have_no_body_and_no_framing(gateway: Gateway) -> None:
    port = gateway.port
    for request in (b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"DELETE /status/204 HTTP/1.1\r\nHost: x\r\n\r\n"):
        answer = await exchange(port, request)
        assert answer.status == 204
        assert answer.header("Content-Length") is None
        assert answer.header("Transfer-Encoding") is None
    answer = await exchange(port, b'GET /conditional HTTP/1.1\r\nHost: x\r\n'
                                  b'If-None-Match: "v1-abc"\r\n\r\n')
    assert answer.status == 304 and answer.header("ETag") == '"v1-abc"'
    assert answer.header("Transfer-Encoding") is None
    head = await exchange(port, b"HEAD /bytes/12345 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.status == 200 and head.header("Content-Length") == "12345"
    # Nothing was sent after the heads: the connection answers the next request at once.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"HEAD /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        from tests.support.rawclient import read_exchange
        assert (await read_exchange(reader, "HEAD")).status == 200
        assert (await read_exchange(reader, "GET")).status == 204
        last = await read_exchange(reader, "GET")
        assert last.body == upstream_app.pattern(3)
    finally:
        writer.close()


async def test_redirects_are_returned_not_followed(gateway: Gateway) -> None:
    answer = await exchange(gateway.port, b"GET /status/302 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 302
    assert answer.header("Location") == "/echo?from=redirect"


async def test_an_unreachable_upstream_is_a_502() -> None:
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    gw = await upstream_app.start_gateway(dead)
    try:
        answer = await exchange(gw.port, b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        await gw.stop()
    assert answer.status == 502
    assert answer.header("Content-Type") == "application/json"
    assert b'"code":"upstream_unavailable"' in answer.body


async def test_no_headers_within_the_read_timeout_is_a_504(impatient: Gateway) -> None:
    started = time.monotonic()
    answer = await exchange(impatient.port, b"GET /slow?delay=3 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 504
    assert b'"code":"upstream_timeout"' in answer.body
    assert time.monotonic() - started < 2


async def test_a_stream_that_stalls_after_its_headers_is_cut(impatient: Gateway) -> None:
    async with aiohttp.ClientSession() as http, \
            http.get(f"{base(impatient)}/stall?delay=3") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_a_body_cut_upstream_is_not_passed_off_as_complete(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{base(gateway)}/cut") as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "1000"
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_a_client_that_goes_away_ends_the_upstream_request(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readexactly(100_000)
    assert upstream_app.ENDLESS_ACTIVE[0] == 1
    writer.transport.abort()
    for _ in range(100):
        if upstream_app.ENDLESS_ACTIVE[0] == 0:
            break
        await asyncio.sleep(0.02)
    assert upstream_app.ENDLESS_ACTIVE[0] == 0


@pytest.mark.parametrize("framing", [b"Content-Length: 50000000", b"Transfer-Encoding: chunked"])
async def test_a_client_that_goes_away_mid_upload_ends_the_upstream_request(
        gateway: Gateway, framing: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /sink HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
    piece = upstream_app.pattern(65536)
    if framing.startswith(b"Transfer"):
        piece = b"%x\r\n%s\r\n" % (len(piece), piece)
    for _ in range(30):
        writer.write(piece)
        await writer.drain()
    for _ in range(100):
        if upstream_app.SINK_ACTIVE[0] == 1:
            break
        await asyncio.sleep(0.01)
    assert upstream_app.SINK_ACTIVE[0] == 1
    writer.transport.abort()
    for _ in range(100):
        if upstream_app.SINK_ACTIVE[0] == 0:
            break
        await asyncio.sleep(0.02)
    assert upstream_app.SINK_ACTIVE[0] == 0


async def test_abandoned_requests_leak_no_file_descriptors(gateway: Gateway) -> None:
    """1000 downloads, each dropped by its client after the first bytes."""
    port = gateway.port

    async def abandon(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        path = "/endless" if n % 2 else "/bytes/2000000"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await reader.readexactly(20_000)
        if n % 3:
            writer.transport.abort()
        else:
            writer.close()

    await asyncio.gather(*(abandon(n) for n in range(20)))  # warm the pool up
    await _settle_fds(None)
    before = upstream_app.open_fds()
    for batch in range(50):
        await asyncio.gather(*(abandon(batch * 20 + n) for n in range(20)))
    after = await _settle_fds(before)
    assert abs(after - before) <= 5, (before, after)
    assert upstream_app.ENDLESS_ACTIVE[0] == 0
    answer = await exchange(port, b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 200


async def _settle_fds(target: int | None) -> int:
    """The fd count once the closing connections have been reaped (within 5 s)."""
    count = upstream_app.open_fds()
    for _ in range(100):
        await asyncio.sleep(0.05)
        now = upstream_app.open_fds()
        if (target is not None and abs(now - target) <= 5) or (target is None and now == count):
            return now
        count = now
    return count


async def test_one_pooled_keep_alive_connection_upstream(gateway: Gateway) -> None:
    ports = set()
    async with aiohttp.ClientSession() as http:
        for _ in range(30):
            async with http.get(f"{base(gateway)}/peer") as resp:
                ports.add(await resp.text())
        # Clients on separate connections share the proxy's upstream connections.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)
                                         ) as fresh:
            for _ in range(10):
                async with fresh.get(f"{base(gateway)}/peer") as resp:
                    ports.add(await resp.text())
    assert len(ports) == 1, ports


async def test_large_bodies_stream_through_both_ways(gateway: Gateway) -> None:
    size = 48 * 1024 * 1024
    piece = upstream_app.pattern(1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    expected = hashlib.sha256(piece * (size // len(piece))).hexdigest()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base(gateway)}/echo", data=body()) as resp:  # chunked
            seen = await resp.json()
        assert seen["bodySize"] == size and seen["bodySha256"] == expected
        digest = hashlib.sha256()
        async with http.get(f"{base(gateway)}/chunked/{size}?piece=65536") as resp:
            async for chunk in resp.content.iter_any():
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(upstream_app.pattern(size)).hexdigest()


async def test_compressed_uploads_are_forwarded_as_sent(gateway: Gateway) -> None:
    import gzip

    packed = gzip.compress(b"hello " * 1000, mtime=0)
    async with aiohttp.ClientSession() as http, http.post(
            f"{base(gateway)}/echo", data=packed,
            headers={"Content-Encoding": "gzip"}) as resp:
        seen = await resp.json()
    # The upstream (aiohttp) inflates it itself: it got the gzip bytes, intact.
    assert resp.status == 200
    assert seen["bodySize"] == 6000


async def test_documented_header_rewrites(gateway: Gateway) -> None:
    """Two request rules docs/headers.md lists: header bytes that are not UTF-8 are
    refused, never re-encoded (valid UTF-8 passes byte for byte); one spelling per
    repeated header name."""
    refused = await exchange(gateway.port, b"GET /echo HTTP/1.1\r\nHost: x\r\n"
                                           b"X-Latin1: caf\xe9\r\n\r\n")
    assert refused.status == 400
    assert orjson.loads(refused.body)["error"]["code"] == "bad_request"
    answer = await exchange(gateway.port, b"GET /echo HTTP/1.1\r\nHost: x\r\n"
                                          b"X-Utf8: caf\xc3\xa9\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    seen = orjson.loads(answer.body)["headers"]
    # (The echo reads header bytes as Latin-1: these are the bytes the upstream got.)
    assert dict((k, v) for k, v in seen if k != "X-A")["X-Utf8"].encode("latin-1") \
        == "café".encode()
    assert [v for k, v in seen if k.lower() == "x-a"] == ["1", "2"]
