"""Riding out the platform-server's restarts (`upstream.retry_connect_ms`): a request
whose connection is refused waits for the upstream and is sent once it is back, its body
whole and once; past the time, the usual 502; a client that goes away is not forwarded
later. The real-process tests are in
tests/process/test_upstream_restart.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from pathlib import Path

import aiohttp
import orjson

from gateproxy.demo.standins import StandIn
from tests.support import upstream_app
from tests.support.gateways import MakeGateway, env_for, url
from tests.support.ports import free_port
from tests.support.standins import BodyRecorder
from tests.support.waiting import wait_for

MIB = os.urandom(1 << 20)


def _env(upstream: StandIn, **extra: str) -> dict[str, str]:
    # docker-runner is irrelevant here: a refused one only gates /api/containers.
    return env_for(upstream, f"http://127.0.0.1:{free_port()}", **extra)


async def test_a_get_and_a_1_mib_post_sent_while_it_is_stopped_get_its_answer(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    recorder = BodyRecorder()
    upstream = StandIn(recorder.app, port=free_port())
    gateway = await make_gateway(_env(upstream))
    try:
        get = asyncio.ensure_future(http.get(url(gateway, "/api/threads?x=1")))
        # A streamed request body: a refused connection must not have consumed any of it.
        post = asyncio.ensure_future(http.post(url(gateway, "/api/upload"), data=MIB))
        await asyncio.sleep(1.0)
        assert not get.done() and not post.done()
        await upstream.start()
        for response in await asyncio.gather(get, post):
            assert response.status == 200
            assert orjson.loads(await response.read()) == {"ok": True}
        assert sorted(recorder.seen) == [
            ("GET", "/api/threads?x=1", 0, hashlib.sha256(b"").hexdigest()),
            ("POST", "/api/upload", len(MIB), hashlib.sha256(MIB).hexdigest())]
    finally:
        await upstream.stop()


def _retry_config(tmp_path: Path, retry_connect_ms: int) -> str:
    path = tmp_path / "gp.yaml"
    path.write_text(f"upstream: {{retry_connect_ms: {retry_connect_ms}}}\n")
    return str(path)


async def test_past_retry_connect_ms_the_502_comes_after_about_that_time(
        make_gateway: MakeGateway, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    upstream = StandIn(BodyRecorder().app, port=free_port())
    gateway = await make_gateway(_env(upstream), _retry_config(tmp_path, 1500))
    started = time.monotonic()
    async with http.post(url(gateway, "/api/threads"), data=b"{}") as response:
        waited = time.monotonic() - started
        assert response.status == 502
        body = orjson.loads(await response.read())
    assert body["error"]["code"] == "upstream_unavailable"
    assert 1.1 <= waited <= 2.0, waited
    assert gateway.node.reconnector.outcomes["timed_out"] == 1


async def test_with_retry_connect_ms_0_the_502_comes_at_once(
        make_gateway: MakeGateway, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    upstream = StandIn(BodyRecorder().app, port=free_port())
    gateway = await make_gateway(_env(upstream), _retry_config(tmp_path, 0))
    started = time.monotonic()
    async with http.get(url(gateway, "/api/threads")) as response:
        assert response.status == 502
    assert time.monotonic() - started < 0.5
    assert not gateway.node.reconnector.state.up  # still seen down, and shown


async def test_a_client_that_goes_away_while_waiting_is_not_forwarded_later(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    recorder = BodyRecorder()
    upstream = StandIn(recorder.app, port=free_port())
    gateway = await make_gateway(_env(upstream))
    reconnector = gateway.node.reconnector
    try:
        gone = asyncio.ensure_future(http.get(url(gateway, "/gone")))
        await wait_for(lambda: reconnector.waiting == 1)
        gone.cancel()
        await wait_for(lambda: reconnector.waiting == 0)
        assert reconnector.outcomes["cancelled"] == 1, reconnector.outcomes
        await upstream.start()
        async with http.get(url(gateway, "/stays")) as response:
            assert response.status == 200
        await asyncio.sleep(0.3)
        assert [seen[1] for seen in recorder.seen] == ["/stays"]
    finally:
        await upstream.stop()


async def test_health_reports_a_stopped_upstream_at_once_instead_of_waiting(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    upstream = StandIn(BodyRecorder().app, port=free_port())
    gateway = await make_gateway(_env(upstream))
    for _ in range(2):  # as the one that finds it down, then while it is down
        started = time.monotonic()
        async with http.get(url(gateway, "/health")) as response:
            assert response.status == 503
            body = orjson.loads(await response.read())
        assert time.monotonic() - started < 0.5
        assert body["upstream"]["error"]["code"] == "upstream_unavailable"
        assert not gateway.node.reconnector.state.up


async def test_its_return_is_seen_without_traffic(
        make_gateway: MakeGateway, http: aiohttp.ClientSession, tmp_path: Path,
        captured_logs: io.StringIO) -> None:
    upstream = StandIn(BodyRecorder().app, port=free_port())
    gateway = await make_gateway(_env(upstream), _retry_config(tmp_path, 100))
    reconnector = gateway.node.reconnector
    try:
        async with http.get(url(gateway, "/api/threads")) as response:
            assert response.status == 502
        assert not reconnector.state.up
        await asyncio.sleep(1.5)  # idle checks find it still down
        assert not reconnector.state.up
        await upstream.start()
        await wait_for(lambda: reconnector.state.up, timeout=3)
    finally:
        await upstream.stop()
    [recovered] = [line for line in map(orjson.loads, captured_logs.getvalue().splitlines())
                   if line["event"] == "upstream_recovered"]
    assert recovered["held"] == 0 and recovered["downForMs"] >= 1500


async def test_a_websocket_handshake_waits_for_it_too(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    upstream = StandIn(upstream_app.app(), port=free_port())
    gateway = await make_gateway(_env(upstream))
    try:
        opening = asyncio.ensure_future(http.ws_connect(url(gateway, "/ws?x=1")))
        await wait_for(lambda: gateway.node.reconnector.waiting == 1)
        await upstream.start()
        socket = await asyncio.wait_for(opening, 5)
        assert orjson.loads(await socket.receive_str())["hello"] == "x=1"
        await socket.close()
    finally:
        await upstream.stop()
