"""Slow clients and too many clients (gateproxy/engine/connection.py, listener.py).

Slowloris on the request head and on the body is cut off by timeouts without holding up
anybody else; legitimate slowness (a keep-alive pause, a long response, a WebSocket
session, the proxy itself holding a fast upload back) is not. Past
`limits.max_connections` new connections wait in the kernel's backlog: the process's
descriptors and memory do not grow with them, and they are served once room is made.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import aiohttp
import pytest
import uvloop
from aiohttp import web

from gateproxy import config
from gateproxy.demo.standins import StandIn, platform_server
from gateproxy.engine.listener import Listener
from gateproxy.serve.gateway import Gateway
from tests.support.hostile_support import RawUpstream
from tests.support.json_logs import log_lines
from tests.support.ports import free_port
from tests.support.processes import Proc, wait_live
from tests.support.standins import StartStandIn

TIMEOUT_MS = 600

# pytest-asyncio's replacement for the fixture below is a conftest-wide hook
# (pytest_asyncio_loop_factories); until the suite adopts one, this module keeps the
# fixture, which still works, and its deprecation notice is not news.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Overriding the \"event_loop_policy\" fixture is deprecated")


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: the process runs on uvloop, whose transports behave
    differently (they read right after connection_made, whatever it asked)."""
    if request.param == "uvloop":
        return cast(asyncio.AbstractEventLoopPolicy, uvloop.EventLoopPolicy())
    return asyncio.DefaultEventLoopPolicy()


async def gateway_for(upstream_url: str, tmp_path: Path,
                      max_connections: int = 10000, timeout_ms: int = TIMEOUT_MS) -> Gateway:
    path = tmp_path / "limits.yaml"
    path.write_text(f"limits: {{max_connections: {max_connections}, "
                    f"header_timeout_ms: {timeout_ms}}}\n")
    env = {"GATEPROXY_HOST": "127.0.0.1", "GATEPROXY_PORT": "0",
           "PLATFORM_SERVER_URL": upstream_url,
           "DOCKER_RUNNER_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    gateway = Gateway(config.load(str(path), env))
    await gateway.start()
    return gateway


def site_of(gateway: Gateway) -> Listener:
    site = gateway.listener
    assert site is not None
    return site


def hold_places(site: Listener, count: int) -> None:
    """As if `count` connections had just been accepted, before the listener paused."""
    site.connections.update(object() for _ in range(count))  # type: ignore[misc]


@pytest.fixture
async def standin(start_standin: StartStandIn) -> StandIn:
    return await start_standin(platform_server())


@pytest.fixture
async def gateway(standin: StandIn, tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = await gateway_for(standin.url, tmp_path)
    yield gw
    await gw.stop()


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    got = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                got += chunk
    except (TimeoutError, ConnectionError):
        pass
    return got


async def timed_get(port: int, path: str = "/api/threads") -> float:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n".encode())
    data = await read_all(reader, 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return time.monotonic() - started


# --- the request head ------------------------------------------------------------------

async def slow_head(port: int, give_up: float) -> tuple[float, bytes]:
    """Send a request head a header line at a time, every 100 ms, never ending it, until
    the proxy answers or closes; the time that took, and what it answered."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    first = asyncio.ensure_future(reader.read(65536))  # the first bytes, or b"" at EOF
    writer.write(b"GET /api/threads HTTP/1.1\r\nHost: p\r\n")
    n = 0
    while not first.done() and time.monotonic() - started < give_up:
        await asyncio.wait({first}, timeout=0.1)
        try:
            writer.write(b"X-Slow-%d: still coming\r\n" % n)
            await writer.drain()
        except ConnectionError:
            break
        n += 1
    elapsed = time.monotonic() - started
    data = await asyncio.wait_for(first, give_up) + await read_all(reader, give_up)
    writer.close()
    return elapsed, data


async def test_slowloris_on_the_head_is_cut_off_without_blocking_others(
        gateway: Gateway, captured_logs: io.StringIO) -> None:
    slow = [asyncio.create_task(slow_head(gateway.port, 5.0)) for _ in range(60)]
    await asyncio.sleep(0.2)
    latencies = []
    while not all(task.done() for task in slow):
        latencies.append(await timed_get(gateway.port))
        await asyncio.sleep(0.02)
    results = [task.result() for task in slow]
    for elapsed, data in results:
        assert elapsed < TIMEOUT_MS / 1000 + 0.7, "cut off soon after the head timeout"
        assert data.startswith(b"HTTP/1.1 408 Request Timeout"), data[:100]
        assert b'"code":"request_timeout"' in data
    assert len(latencies) >= 5 and max(latencies) < 0.3, latencies
    await gateway.stop()  # flushes the counts
    limits = [line for line in log_lines(captured_logs) if line["event"] == "client_limits"]
    assert sum(int(str(line.get("headTimeouts", 0))) for line in limits) == 60
    assert len(limits) <= 2, "a count every few seconds, not a line per client"


async def test_a_connection_that_never_sends_a_byte_is_closed_silently(
        gateway: Gateway) -> None:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    data = await read_all(reader, 3)
    writer.close()
    assert data == b"", "no 408 for a preconnect that never asked anything"
    assert TIMEOUT_MS / 1000 - 0.1 < time.monotonic() - started < TIMEOUT_MS / 1000 + 0.7


async def test_a_keep_alive_pause_between_requests_is_not_a_slow_head(
        gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    for n in range(2):
        writer.write(b"GET /api/threads HTTP/1.1\r\nHost: p\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), (n, head)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(TIMEOUT_MS / 1000 * 2)  # idle: keepalive_timeout's business
    writer.close()


async def test_a_head_pipelined_behind_a_long_response_waits_its_turn(
        gateway: Gateway) -> None:
    """The clock of a pipelined head starts once the answers before it are out, and its
    408 never lands inside another answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /api/events/sse?count=4&interval=0.4 HTTP/1.1\r\nHost: p\r\n\r\n"
                 b"GET /api/threads HTTP/1.1\r\nHost: p\r\n")  # and no more of it
    data = await read_all(reader, 6)
    writer.close()
    first, _, rest = data.partition(b"\r\n0\r\n\r\n")  # the stream's last chunk
    assert first.startswith(b"HTTP/1.1 200") and first.count(b"event: tick") == 4, data[:300]
    assert b"408" not in first
    assert rest.startswith(b"HTTP/1.1 408 Request Timeout"), rest[:100]


async def test_a_long_response_is_not_cut_by_the_client_timeouts(
        gateway: Gateway, http: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{gateway.port}/api/events/sse?count=4&interval=0.4"
    async with http.get(url) as resp:
        body = await resp.read()
    assert body.count(b"event: tick") == 4


async def test_a_websocket_session_is_not_cut_by_the_client_timeouts(
        gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(f"http://127.0.0.1:{gateway.port}/api/echo/ws",
                               protocols=("echo",)) as ws:
        await asyncio.sleep(TIMEOUT_MS / 1000 * 2)
        await ws.send_str("still here")
        assert (await ws.receive(timeout=5)).data == "still here"


# --- the request body ------------------------------------------------------------------

@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


async def test_a_body_that_stalls_is_cut_off_and_never_completes_upstream(
        raw_upstream: RawUpstream, tmp_path: Path) -> None:
    gateway = await gateway_for(raw_upstream.url, tmp_path)
    try:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"POST /api/threads HTTP/1.1\r\nHost: p\r\nContent-Length: 1000\r\n\r\n"
                     + b"x" * 100)
        data = await read_all(reader, 5)
        elapsed = time.monotonic() - started
        writer.close()
        assert data == b"", "aborted: no answer to a request that never finished"
        assert TIMEOUT_MS / 1000 - 0.1 < elapsed < TIMEOUT_MS / 1000 + 0.7, elapsed
        await asyncio.sleep(0.2)
        assert raw_upstream.received == [], "the upstream never got a complete request"
        assert raw_upstream.connections and raw_upstream.ended == {0}, \
            "the upstream request was abandoned with its connection"
        assert site_of(gateway).totals["bodyTimeouts"] == 1
    finally:
        await gateway.stop()


async def test_a_body_dripped_a_byte_at_a_time_is_cut_off(
        raw_upstream: RawUpstream, tmp_path: Path) -> None:
    """Each byte resets a plain idle timer; the minimum rate is what stops this one."""
    gateway = await gateway_for(raw_upstream.url, tmp_path)
    try:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"POST /api/threads HTTP/1.1\r\nHost: p\r\nContent-Length: 100000\r\n\r\n")
        cut = False
        for _ in range(100):  # 10 s at most
            try:
                writer.write(b"x")
                await writer.drain()
            except ConnectionError:
                cut = True
                break
            if reader.at_eof():
                cut = True
                break
            await asyncio.sleep(0.1)
            await asyncio.sleep(0)  # let EOF be noticed
            if reader.at_eof() or writer.transport.is_closing():
                cut = True
                break
        elapsed = time.monotonic() - started
        writer.close()
        assert cut, "a dripped body was never cut off"
        # The allowance, plus 1 s per 500 bytes received (a few dozen here).
        assert elapsed < TIMEOUT_MS / 1000 + 1.0, elapsed
        await asyncio.sleep(0.2)  # the abandoned upstream request ends with its connection
        assert raw_upstream.received == []
        assert site_of(gateway).totals["bodyTimeouts"] == 1
    finally:
        await gateway.stop()


async def test_a_steady_slow_upload_is_not_cut_off(
        start_standin: StartStandIn, tmp_path: Path) -> None:
    async def digest(request: web.Request) -> web.Response:
        hasher = hashlib.sha256()
        async for chunk in request.content.iter_any():
            hasher.update(chunk)
        return web.json_response({"sha256": hasher.hexdigest()})

    app = web.Application()
    app.router.add_post("/upload", digest)
    upstream = await start_standin(app)
    gateway = await gateway_for(upstream.url, tmp_path)
    try:
        # 2 s in all, a chunk every 200 ms: well above the minimum rate, never silent.
        chunks = [os.urandom(16384) for _ in range(10)]

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0.2)

        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{gateway.port}/upload", data=body()) as resp:
            assert resp.status == 200
            assert (await resp.json())["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    finally:
        await gateway.stop()


async def test_time_the_proxy_holds_an_upload_back_is_not_the_clients(
        start_standin: StartStandIn, tmp_path: Path) -> None:
    """The upstream takes its time to start reading a large body: the proxy stops
    reading from the client (backpressure) for longer than the body timeout, which must
    not count against the client."""
    size = 48 * 1024 * 1024

    async def slow_reader(request: web.Request) -> web.Response:
        await asyncio.sleep(TIMEOUT_MS / 1000 * 3)
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"bytes": total})

    app = web.Application(client_max_size=size * 2)
    app.router.add_post("/upload", slow_reader)
    upstream = await start_standin(app)
    gateway = await gateway_for(upstream.url, tmp_path)
    try:
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{gateway.port}/upload", data=b"z" * size) as resp:
            assert resp.status == 200
            assert (await resp.json())["bytes"] == size
        assert site_of(gateway).totals["bodyTimeouts"] == 0
    finally:
        await gateway.stop()


# --- the connection cap ----------------------------------------------------------------

async def test_past_the_cap_connections_wait_and_are_served_once_room_is_made(
        standin: StandIn, tmp_path: Path) -> None:
    gateway = await gateway_for(standin.url, tmp_path, max_connections=20,
                                timeout_ms=30000)
    site = site_of(gateway)
    try:
        holders = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(20)]
        await asyncio.sleep(0.1)
        assert len(site.connections) == 20 and site.paused

        async def waiter() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(b"GET /api/threads HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
            data = await read_all(reader, 10)
            writer.close()
            return data

        waiting = [asyncio.create_task(waiter()) for _ in range(100)]
        await asyncio.sleep(0.5)
        assert not any(task.done() for task in waiting), "nobody past the cap is served"
        assert len(site.connections) == 20, "and nobody past the cap is accepted"
        for _, writer in holders:
            writer.close()
        answers = await asyncio.gather(*waiting)
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), \
            [a[:40] for a in answers if not a.startswith(b"HTTP/1.1 200")][:3]
        await asyncio.sleep(0.1)
        assert not site.connections and not site.paused
    finally:
        await gateway.stop()


async def test_a_connection_accepted_in_the_same_burst_as_the_cap_waits_its_turn(
        standin: StandIn, tmp_path: Path) -> None:
    gateway = await gateway_for(standin.url, tmp_path, max_connections=5)
    site = site_of(gateway)
    try:
        hold_places(site, 5)
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"GET /api/threads HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        assert await read_all(reader, 0.5) == b"", "it waits, unread"
        assert len(site.waiting) == 1 and len(site.connections) == 5
        site.closed(next(iter(site.connections)))  # one of the five ends: the waiting one
        # is served at once
        data = await read_all(reader, 3)
        writer.close()
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
        await asyncio.sleep(0.1)
        assert len(site.connections) == 4 and not site.waiting
    finally:
        site.connections.clear()
        await gateway.stop()


async def test_past_a_full_queue_a_connection_gets_a_503_it_can_read(
        standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = await gateway_for(standin.url, tmp_path, max_connections=5)
    site = site_of(gateway)
    try:
        hold_places(site, 5)
        monkeypatch.setattr(site, "backlog", 0)  # the queue is full
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        # The request is sent and never read: the answer must survive that.
        writer.write(b"GET /api/threads HTTP/1.1\r\nHost: p\r\n\r\n" + b"x" * 100000)
        data = await read_all(reader, 3)
        writer.close()
        assert data.startswith(b"HTTP/1.1 503 Service Unavailable"), data[:100]
        assert b'"code":"too_many_connections"' in data and b"Retry-After: 1" in data
        assert len(site.connections) == 5, "a refused connection is not counted"
        assert site.totals["refused"] == 1
    finally:
        site.connections.clear()
        await gateway.stop()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_the_process_does_not_grow_with_connections_past_the_cap(
        tmp_path: Path, standin: StandIn, procs: list[Proc]) -> None:
    cap = 50
    port = free_port()
    path = tmp_path / "cap.yaml"
    path.write_text(f"listen: {{host: 127.0.0.1, port: {port}}}\n"
                    f"upstream: {{url: '{standin.url}'}}\n"
                    f"limits: {{max_connections: {cap}, header_timeout_ms: 30000}}\n"
                    "shutdown_delay_ms: 0\n"
                    f"dependencies: [{{name: docker-runner, base_url: "
                    f"'http://127.0.0.1:{free_port()}'}}]\n")
    proc = Proc("serve", "--config", str(path))
    procs.append(proc)
    await asyncio.wait_for(wait_live(port), 15)
    pid = proc.popen.pid
    await asyncio.sleep(0.3)
    base_fds, base_rss = _fds(pid), _rss_kib(pid)
    holders = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap)]
    await asyncio.sleep(0.3)
    at_cap_fds, at_cap_rss = _fds(pid), _rss_kib(pid)
    assert at_cap_fds <= base_fds + cap + 5
    extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(400)]
    for _, writer in extra:
        writer.write(b"GET /api/threads HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    await asyncio.sleep(0.5)
    past_cap_fds, past_cap_rss = _fds(pid), _rss_kib(pid)
    assert past_cap_fds <= at_cap_fds + 2, (base_fds, at_cap_fds, past_cap_fds)
    assert past_cap_rss - at_cap_rss < 2048, (base_rss, at_cap_rss, past_cap_rss)
    # An answer would be sitting in the reader's buffer by now.
    assert not any(reader.at_eof() or reader._buffer  # type: ignore[attr-defined]
                   for reader, _ in extra), \
        "connections past the cap wait; they are neither answered nor dropped"
    for _, writer in holders:
        writer.close()
    answers = await asyncio.gather(*(read_all(reader, 15) for reader, _ in extra))
    for _, writer in extra:
        writer.close()
    assert [a[:60] for a in answers if not a.startswith(b"HTTP/1.1 200")] == []
    assert proc.popen.poll() is None
