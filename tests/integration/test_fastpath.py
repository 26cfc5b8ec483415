"""The fast path (gateproxy/aio/fastpath.py) answers exactly as the usual aiohttp path would:
the same bytes for the same requests, in order on a connection, and it lets go of what
is not its to answer. Real gateways and upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import helpers, web
from aiohttp.http import HttpVersion11, RawRequestMessage
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateproxy.aio import fastpath
from gateproxy.core.answers import Answer
from gateproxy.core.dependency import State
from gateproxy.core.gate import Gate, Guard
from gateproxy.demo.standins import StandIn
from gateproxy.http_rules.actions import ForwardPlan
from gateproxy.http_rules.headers import response_headers
from gateproxy.http_rules.plan import Planner
from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app
from tests.support.ports import free_port
from tests.support.rawclient import Exchange, exchange, read_exchange
from tests.support.waiting import wait_for

Verdicts = list[str]


def spy(gateway: Gateway) -> Verdicts:
    """Record what the fast path takes for each request it looks at: a forward, an own
    answer (its status), or nothing (the usual path)."""
    fast = _fast(gateway)
    take = fast.take
    seen: Verdicts = []

    def recording(message: Any, peername: object, tls: bool) -> Answer | ForwardPlan | None:
        action = take(message, peername, tls)
        seen.append("usual" if action is None else
                    "forward" if isinstance(action, ForwardPlan) else str(action.status))
        return action

    fast.take = recording  # type: ignore[method-assign]
    return seen


def without_fast_path(gateway: Gateway) -> None:
    _fast(gateway).take = lambda *_: None  # type: ignore[method-assign]


def _fast(gateway: Gateway) -> fastpath.FastPath:
    (site,) = gateway._runners[0].sites
    assert isinstance(site, fastpath.FastPathSite)
    return site._fast


@pytest.fixture
async def gateways() -> AsyncIterator[Callable[..., Any]]:
    started: list[Gateway] = []

    async def start(upstream_url: str) -> Gateway:
        gateway = await upstream_app.start_gateway(upstream_url, fast_path=True)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop()


def comparable(answer: Exchange) -> tuple[str, list[tuple[str, str]], bytes, str]:
    # Date is the clock's; Retry-After follows each gateway's own probe schedule.
    headers = [(k, "<varies>" if k.lower() in ("date", "retry-after") else v)
               for k, v in answer.headers]
    return answer.status_line, headers, answer.body, answer.framing


def get(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: platform.test\r\n{extra}\r\n".encode()


TARGETS = [
    "/echo", "/echo?a=1&b=%20", "/bytes/0", "/bytes/100", "/bytes/300000", "/chunked/5000",
    "/status/204", "/status/304", "/status/404", "/status/500", "/bare/length",
    "/bare/close", "/reason", "/hop", "/cookies", "/encoded/gzip",
    "/api/containers", "/api/containers/abc", "/API/Containers/../containers",
    "/echo/%2e%2e/x", "http://platform.test/echo",
]


async def test_fast_and_usual_paths_answer_alike(
        upstream: StandIn, gateways: Callable[..., Any]) -> None:
    fast = await gateways(upstream.url)
    usual = await gateways(upstream.url)
    without_fast_path(usual)
    verdicts = spy(fast)
    for target in TARGETS:
        for extra in ("", "X-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive, X-Gone\r\n"
                          "X-Gone: 1\r\n"):
            request = get(target, extra)
            assert comparable(await exchange(fast.port, request)) == \
                comparable(await exchange(usual.port, request)), (target, extra)
    for request in (get("/echo", "Host: evil.test\r\n").replace(b"Host: platform.test\r\n", b""),
                    b"GET /echo HTTP/1.1\r\nHost: bad host\r\n\r\n"):
        assert comparable(await exchange(fast.port, request)) == \
            comparable(await exchange(usual.port, request))
    # The plain GETs and the gated paths went the fast way.
    assert verdicts.count("forward") >= 30 and verdicts.count("503") >= 4, verdicts


async def test_an_unreachable_upstream_gets_the_same_502(gateways: Callable[..., Any]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    fast, usual = await gateways(url), await gateways(url)
    without_fast_path(usual)
    verdicts = spy(fast)
    answers = [comparable(await exchange(g.port, get("/anything"))) for g in (fast, usual)]
    assert answers[0] == answers[1] and answers[0][0].startswith("HTTP/1.1 502")
    assert verdicts == ["forward"]


async def test_admin_endpoints_and_health_are_never_forwarded(
        upstream: StandIn, gateways: Callable[..., Any]) -> None:
    gateway = await gateways(upstream.url)
    verdicts = spy(gateway)
    live = await exchange(gateway.port, get("/_gateproxy/live"))
    health = await exchange(gateway.port, get("/health"))
    assert live.status == 200
    # Answered by gateproxy itself: a forwarded answer would carry its Via.
    assert live.header("Via") is None and health.header("Via") is None
    assert verdicts == ["usual", "usual"]


async def test_pipelined_requests_are_answered_in_order(
        upstream: StandIn, gateways: Callable[..., Any]) -> None:
    gateway = await gateways(upstream.url)
    verdicts = spy(gateway)
    requests = [get("/slow?delay=0.3"), get("/api/containers"), get("/bytes/10"),
                b"POST /echo HTTP/1.1\r\nHost: platform.test\r\nContent-Length: 2\r\n\r\nhi",
                get("/reason")]
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"".join(requests))
        statuses = []
        for method in ("GET", "GET", "GET", "POST", "GET"):
            answer = await asyncio.wait_for(read_exchange(reader, method), 5)
            statuses.append(answer.status)
    finally:
        writer.close()
    assert statuses == [200, 503, 200, 200, 299]
    # The POST has a body: it and what follows it went through aiohttp's own loop.
    assert verdicts == ["forward", "503", "forward"]


async def test_a_client_that_goes_away_cancels_its_upstream_request(
        upstream: StandIn, gateways: Callable[..., Any]) -> None:
    gateway = await gateways(upstream.url)
    verdicts = spy(gateway)
    before = upstream_app.ENDLESS_ACTIVE[0]
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(get("/endless"))
    await reader.readexactly(100_000)
    assert upstream_app.ENDLESS_ACTIVE[0] == before + 1
    writer.close()
    for _ in range(100):
        if upstream_app.ENDLESS_ACTIVE[0] == before:
            break
        await asyncio.sleep(0.02)
    assert upstream_app.ENDLESS_ACTIVE[0] == before
    assert verdicts == ["forward"]


async def test_shutdown_lets_a_fast_forward_finish(upstream: StandIn) -> None:
    gateway = await upstream_app.start_gateway(upstream.url, fast_path=True)
    verdicts = spy(gateway)
    answer = asyncio.create_task(exchange(gateway.port, get("/slow?delay=0.5")))
    await asyncio.sleep(0.2)
    await gateway.stop()
    done = await answer
    assert done.status == 200 and done.body == b"late"
    assert verdicts == ["forward"]


async def test_a_large_download_to_a_slow_reader_arrives_whole(
        upstream: StandIn, gateways: Callable[..., Any]) -> None:
    gateway = await gateways(upstream.url)
    verdicts = spy(gateway)
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
    assert verdicts == ["forward", "forward"]


async def stalled_download(request: web.Request) -> web.StreamResponse:
    """A Content-Length body that stops half way and stays silent."""
    resp = web.StreamResponse(headers={"Content-Length": "400000"})
    await resp.prepare(request)
    await resp.write(b"x" * 200_000)
    await asyncio.sleep(5)
    return resp


async def test_a_download_that_stalls_is_cut_after_the_read_timeout(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_get("/stalled", stalled_download)
    standin = StandIn(app)
    await standin.start()
    path = tmp_path / "gateproxy.yaml"
    path.write_text("upstream: {read_timeout_ms: 300}\n")
    gateway = await upstream_app.start_gateway(standin.url, str(path), fast_path=True)
    verdicts = spy(gateway)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(get("/stalled"))
        data = await asyncio.wait_for(reader.read(-1), 3)  # until the proxy closes
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"Content-Length: 400000" in head
        assert 0 < len(body) < 400_000  # cut: never passed off as complete
        assert verdicts == ["forward"]
    finally:
        await gateway.stop()
        await standin.stop()


async def test_keep_alive_is_not_cut_during_a_forward_and_closes_an_idle_connection(
        upstream: StandIn, gateways: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    made = fastpath.FastPathHandler.__init__

    def short_keep_alive(self: fastpath.FastPathHandler, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        self._keepalive_timeout = 0.3

    monkeypatch.setattr(fastpath.FastPathHandler, "__init__", short_keep_alive)
    gateway = await gateways(upstream.url)
    verdicts = spy(gateway)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        for target in ("/slow?delay=0.5", "/bytes/10"):  # longer than keep-alive, then not
            writer.write(get(target))
            assert (await asyncio.wait_for(read_exchange(reader, "GET"), 3)).status == 200
        # Idle for longer than keep-alive: aiohttp's own clock closes the connection.
        assert await asyncio.wait_for(reader.read(), 2) == b""
    finally:
        writer.close()
    assert verdicts == ["forward", "forward"]


class ReorderedGate(Gate):
    """The gate's 503 headers in another order: Retry-After first, its value the test's."""

    retry_after = "7"

    def rejection_headers(self, guard: Guard, origin: str | None) -> list[tuple[str, str]]:
        headers = super().rejection_headers(guard, origin)
        return [("Retry-After", self.retry_after),
                *(header for header in headers if header[0] != "Retry-After")]


def parsed_get(target: str) -> RawRequestMessage:
    """What aiohttp's parser makes of `get(target)`."""
    return RawRequestMessage(
        "GET", target, HttpVersion11, CIMultiDictProxy(CIMultiDict(Host="platform.test")),
        ((b"Host", b"platform.test"),), False, None, False, False, URL(target))


async def test_the_cached_503_follows_its_headers_not_their_positions(
        upstream: StandIn, gateways: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = await gateways(upstream.url)
    (guard,) = gateway.node.guards  # docker-runner, unreachable
    await wait_for(lambda: guard.status.state is State.DOWN)
    gate = ReorderedGate(gateway.node.guards, frozenset())

    class Policy:
        planner = Planner(lambda: gate, lambda rule: None)
        plan = planner.plan
        response_headers = staticmethod(response_headers)

        def forwarded(self, method: str, status: int, target: str) -> None:
            pass

        def latency(self, seconds: float) -> None:
            pass

    fast = fastpath.FastPath(Policy(), gateway.upstream)
    # One Date for every answer: only the headers can tell them apart.
    monkeypatch.setattr(helpers, "rfc822_formatted_time", lambda: "Thu, 01 Jan 2026 00:00:00 GMT")
    message = parsed_get("/api/containers")

    def written() -> bytes:
        answer = fast.take(message, None, False)
        assert isinstance(answer, Answer)
        return fast.rendered(answer)

    first = written()
    assert b"\r\nRetry-After: 7\r\n" in first, first
    assert written() is first, "the same headers and Date: the cached bytes"
    gate.retry_after = "8"
    again = written()
    assert b"\r\nRetry-After: 8\r\n" in again, again
    assert again.replace(b"Retry-After: 8", b"Retry-After: 7") == first
