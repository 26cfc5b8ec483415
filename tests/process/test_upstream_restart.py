"""Issue 22 on a real `gateproxy serve` process: the platform-server (a real server on a
fixed loopback port, stopped and started by the test) restarts, and requests sent
meanwhile wait for it (`upstream.retry_connect_ms`), one connection attempt at a time,
at most `upstream.retry_max_requests` of them; the 502 after the time, at once past the
limit, and at SIGTERM; a client that goes away is not forwarded later; the gate's 503 is
unchanged."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from pathlib import Path

import aiohttp
import orjson

from gateproxy.demo.standins import StandIn
from tests.support.metric_samples import parse, value
from tests.support.ports import free_port, unaccepting
from tests.support.processes import Proc, wait_live
from tests.support.standins import BodyRecorder

MIB = os.urandom(1 << 20)
GATED = "/api/containers"
OWN_503 = {"error": {"code": "docker_runner_not_ready", "message": "docker-runner not ready"}}


def serve(tmp_path: Path, upstream_port: int, env: dict[str, str] | None = None,
          **upstream: int) -> tuple[Proc, int]:
    """A gateproxy in front of 127.0.0.1:`upstream_port`, docker-runner refused (so its
    routes are gated), `upstream` settings added; and its port."""
    port = free_port()
    settings = ", ".join([f"url: 'http://127.0.0.1:{upstream_port}'",
                          *(f"{key}: {val}" for key, val in upstream.items())])
    path = tmp_path / "gp.yaml"
    path.write_text("\n".join([
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        f"upstream: {{{settings}}}",
        "shutdown_delay_ms: 0",
        "dependencies:",
        "  - name: docker-runner",
        f"    base_url: 'http://127.0.0.1:{free_port()}'",
        "    retry: {base_delay_ms: 20000, max_delay_ms: 30000, jitter_ms: 0}",
        f"    gated_routes: [{GATED}]",
    ]) + "\n")
    return Proc("serve", "--config", str(path), env=env), port


async def metric(http: aiohttp.ClientSession, port: int, name: str, **labels: str) -> float:
    async with http.get(f"http://127.0.0.1:{port}/_gateproxy/metrics") as resp:
        return value(parse(await resp.text()), name, **labels)


async def upstream_row(http: aiohttp.ClientSession, port: int) -> dict[str, object]:
    async with http.get(f"http://127.0.0.1:{port}/_gateproxy/status.json") as resp:
        row = orjson.loads(await resp.read())["upstream"]
    assert isinstance(row, dict)
    return row


async def until_waiting(http: aiohttp.ClientSession, port: int, count: int) -> None:
    deadline = time.monotonic() + 10
    while (await upstream_row(http, port))["waiting"] != count:
        assert time.monotonic() < deadline, f"{count} requests never waited"
        await asyncio.sleep(0.05)


async def sigterm(proc: Proc) -> list[dict[str, object]]:
    proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.popen.wait, 15) == 0
    return proc.lines()


def events(lines: list[dict[str, object]], event: str) -> list[dict[str, object]]:
    return [line for line in lines if line["event"] == event]


async def test_a_get_and_a_1_mib_post_sent_while_it_is_stopped_get_its_200(
        tmp_path: Path, procs: list[Proc]) -> None:
    recorder = BodyRecorder()
    upstream = StandIn(recorder.app, port=free_port())
    proc, port = serve(tmp_path, upstream.port)
    procs.append(proc)
    await wait_live(port)
    try:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            get = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/api/threads"))
            post = asyncio.ensure_future(http.post(f"http://127.0.0.1:{port}/api/files",
                                                   data=MIB))
            await until_waiting(http, port, 2)
            await asyncio.sleep(1.0 - (time.monotonic() - started))
            await upstream.start()
            for response in await asyncio.gather(get, post):
                assert response.status == 200
                assert orjson.loads(await response.read()) == {"ok": True}
            assert await metric(http, port, "gateproxy_upstream_retries_total",
                                outcome="forwarded") == 2
            assert await metric(http, port, "gateproxy_upstream_up") == 1
            row = await upstream_row(http, port)
            assert row["status"] == "up" and row["restartsLastHour"] == 1
            error = row["lastError"]
            assert isinstance(error, dict) and error["code"] == "connection_refused"
    finally:
        await upstream.stop()
    # Each once, and the body whole: no byte of it went to a refused connection.
    assert sorted(recorder.seen) == [
        ("GET", "/api/threads", 0, hashlib.sha256(b"").hexdigest()),
        ("POST", "/api/files", len(MIB), hashlib.sha256(MIB).hexdigest())]
    lines = await sigterm(proc)
    [down] = events(lines, "upstream_down")
    assert down["errorCode"] == "connection_refused" and down["level"] == "WARNING"
    [recovered] = events(lines, "upstream_recovered")
    assert recovered["held"] == 2
    assert 900 <= int(str(recovered["downForMs"])) <= 3000


async def test_stopped_past_retry_connect_ms_the_502_comes_after_it_and_gates_answer_as_ever(
        tmp_path: Path, procs: list[Proc]) -> None:
    proc, port = serve(tmp_path, free_port(), retry_connect_ms=2000)
    procs.append(proc)
    await wait_live(port)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        waiting = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/api/threads"))
        await until_waiting(http, port, 1)
        # The gate's 503 meanwhile: at once, unchanged.
        gated_at = time.monotonic()
        async with http.get(f"http://127.0.0.1:{port}{GATED}") as resp:
            assert resp.status == 503 and orjson.loads(await resp.read()) == OWN_503
        assert time.monotonic() - gated_at < 0.5
        async with await waiting as resp:
            waited = time.monotonic() - started
            assert resp.status == 502
            body = orjson.loads(await resp.read())
        assert body["error"]["code"] == "upstream_unavailable"
        assert 1.5 <= waited <= 2.6, waited
        assert await metric(http, port, "gateproxy_upstream_retries_total",
                            outcome="timed_out") == 1
        assert await metric(http, port, "gateproxy_upstream_up") == 0
    await sigterm(proc)


async def test_past_retry_max_requests_waiting_the_502_comes_at_once(
        tmp_path: Path, procs: list[Proc]) -> None:
    upstream = StandIn(BodyRecorder().app, port=free_port())
    proc, port = serve(tmp_path, upstream.port, retry_connect_ms=10000,
                       retry_max_requests=100)
    procs.append(proc)
    await wait_live(port)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async def one(i: int) -> tuple[int, float]:
                started = time.monotonic()
                async with http.get(f"http://127.0.0.1:{port}/api/threads/{i}") as resp:
                    await resp.read()
                    return resp.status, time.monotonic() - started

            requests = [asyncio.ensure_future(one(i)) for i in range(200)]
            deadline = time.monotonic() + 10
            while sum(r.done() for r in requests) < 100:
                assert time.monotonic() < deadline, "the 502s past the limit did not come"
                await asyncio.sleep(0.05)
            rejected = [r.result() for r in requests if r.done()]
            assert len(rejected) == 100
            assert all(status == 502 and took < 2.0 for status, took in rejected)
            assert (await upstream_row(http, port))["waiting"] == 100
            await upstream.start()
            held = await asyncio.wait_for(
                asyncio.gather(*[r for r in requests if not r.done()]), 10)
            assert [status for status, _ in held] == [200] * 100
            for outcome, count in (("rejected", 100), ("forwarded", 100), ("timed_out", 0)):
                assert await metric(http, port, "gateproxy_upstream_retries_total",
                                    outcome=outcome) == count
    finally:
        await upstream.stop()
    await sigterm(proc)


async def test_a_client_that_goes_away_while_waiting_is_not_forwarded_later(
        tmp_path: Path, procs: list[Proc]) -> None:
    recorder = BodyRecorder()
    upstream = StandIn(recorder.app, port=free_port())
    proc, port = serve(tmp_path, upstream.port, retry_connect_ms=10000)
    procs.append(proc)
    await wait_live(port)
    try:
        async with aiohttp.ClientSession() as http:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /gone HTTP/1.1\r\nHost: p\r\n\r\n")
            await until_waiting(http, port, 1)
            writer.close()
            await until_waiting(http, port, 0)
            assert await metric(http, port, "gateproxy_upstream_retries_total",
                                outcome="cancelled") == 1
            await upstream.start()
            async with http.get(f"http://127.0.0.1:{port}/stays") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.5)
    finally:
        await upstream.stop()
    assert [seen[1] for seen in recorder.seen] == ["/stays"]
    await sigterm(proc)


async def test_sigterm_ends_the_waits_with_the_502_before_the_drain_ends(
        tmp_path: Path, procs: list[Proc]) -> None:
    proc, port = serve(tmp_path, free_port(), retry_connect_ms=30000)
    procs.append(proc)
    await wait_live(port)
    async with aiohttp.ClientSession() as http:
        waiting = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/api/threads"))
        await until_waiting(http, port, 1)
        signalled = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        async with await waiting as resp:
            assert resp.status == 502
            assert (orjson.loads(await resp.read()))["error"]["code"] == "upstream_unavailable"
        assert time.monotonic() - signalled < 1.0
    assert await asyncio.to_thread(proc.popen.wait, 15) == 0


def _syn_sent(port: int, ours: set[int]) -> set[int]:
    """The local ports of this machine's sockets still connecting (SYN-SENT) to
    127.0.0.1:`port`, but for `ours`."""
    found = set()
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if state == "02" and remote == f"0100007F:{port:04X}":
                local_port = int(local.split(":")[1], 16)
                if local_port not in ours:
                    found.add(local_port)
    return found


async def test_with_50_waiting_at_most_one_connection_attempt_is_in_flight(
        tmp_path: Path, procs: list[Proc]) -> None:
    """The attempts are made slow enough to see: once the upstream is down, its port gets
    a listener whose accept queue is full, so the kernel drops every SYN and a connect
    stays in SYN-SENT until connect_timeout_ms. /proc/net/tcp, sampled, then shows every
    attempt in flight; requests each making their own would show up to 50 at once."""
    upstream = StandIn(BodyRecorder().app, port=free_port())
    proc, port = serve(tmp_path, upstream.port, retry_connect_ms=20000,
                       connect_timeout_ms=500)
    procs.append(proc)
    await wait_live(port)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            requests = [asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/x/{i}"))
                        for i in range(50)]
            await until_waiting(http, port, 50)
            with unaccepting(upstream.port) as (_, ours):
                seen: set[int] = set()
                most = 0
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    connecting = _syn_sent(upstream.port, ours)
                    most = max(most, len(connecting))
                    seen |= connecting
                    await asyncio.sleep(0.01)
            assert len(seen) >= 2, f"too few attempts were seen: {seen}"
            assert most == 1
            assert (await upstream_row(http, port))["waiting"] == 50
            await upstream.start()
            for response in await asyncio.wait_for(asyncio.gather(*requests), 10):
                assert response.status == 200
                response.release()
    finally:
        await upstream.stop()
    [recovered] = events(await sigterm(proc), "upstream_recovered")
    assert recovered["held"] == 50


async def test_with_two_workers_each_holds_its_own_and_the_admin_endpoints_add_them_up(
        tmp_path: Path, procs: list[Proc]) -> None:
    upstream = StandIn(BodyRecorder().app, port=free_port())
    proc, port = serve(tmp_path, upstream.port, {"GATEPROXY_WORKERS": "2"},
                       retry_connect_ms=15000)
    procs.append(proc)
    await wait_live(port)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            requests = [asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/x/{i}"))
                        for i in range(20)]
            await until_waiting(http, port, 20)  # reported by the workers every second
            row = await upstream_row(http, port)
            assert row["status"] == "down" and row["restartsLastHour"] == 1
            await upstream.start()
            for response in await asyncio.wait_for(asyncio.gather(*requests), 10):
                assert response.status == 200
                response.release()
            deadline = time.monotonic() + 5
            while await metric(http, port, "gateproxy_upstream_retries_total",
                               outcome="forwarded") != 20:
                assert time.monotonic() < deadline, "the workers' counts do not add up"
                await asyncio.sleep(0.1)
            assert await metric(http, port, "gateproxy_ready") == 1  # the supervisor's
            while (await upstream_row(http, port))["status"] != "up":
                assert time.monotonic() < deadline, "the workers never found it up"
                await asyncio.sleep(0.1)
    finally:
        await upstream.stop()
    await sigterm(proc)
