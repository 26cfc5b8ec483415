"""Issue 14 on a real `gateproxy serve` process with real stand-ins: a failure seen within
a second (passive detection), maintenance by hand on the admin port, short restarts
ridden out with `hold_ms`."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateproxy.demo.standins import StandIn, docker_runner, platform_server
from tests.support.ports import free_port
from tests.support.processes import Proc, wait_live
from tests.support.standins import Recorder, StartStandIn

GATED = "/api/containers"
OWN_503 = {"error": {"code": "docker_runner_not_ready", "message": "docker-runner not ready"}}
MAINTENANCE = "/_gateproxy/dependencies/docker-runner/maintenance"
TOKEN = "admin-token-0123456789-process"


def write_config(tmp_path: Path, upstream: str, runner: str, port: int,
                 admin_port: int | None = None, base_delay_ms: int = 50,
                 interval_ms: int = 30000, gated: str = GATED, **dep: object) -> Path:
    lines = [
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        f"upstream: {{url: '{upstream}'}}",
        "shutdown_delay_ms: 0",
        *([f"admin_port: {admin_port}"] if admin_port is not None else []),
        "dependencies:",
        "  - name: docker-runner",
        f"    base_url: '{runner}'",
        f"    probe_interval_ms: {interval_ms}",
        f"    retry: {{base_delay_ms: {base_delay_ms}, max_delay_ms: 30000, jitter_ms: 0}}",
        f"    gated_routes: [{gated}]",
        *(f"    {key}: {value}" for key, value in dep.items()),
    ]
    path = tmp_path / "gp.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, object]:
    async with http.get(url) as resp:
        return resp.status, orjson.loads(await resp.read())


async def dependency(http: aiohttp.ClientSession, admin: int) -> dict[str, object]:
    _, data = await get_json(http, f"http://127.0.0.1:{admin}/_gateproxy/status.json")
    assert isinstance(data, dict)
    dep = data["dependencies"][0]
    assert isinstance(dep, dict)
    return dep


async def wait_status(http: aiohttp.ClientSession, admin: int, status: str,
                      timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (await dependency(http, admin))["status"] != status:
        assert time.monotonic() < deadline, f"docker-runner never became {status}"
        await asyncio.sleep(0.05)


async def metric(http: aiohttp.ClientSession, admin: int, name: str) -> float:
    async with http.get(f"http://127.0.0.1:{admin}/_gateproxy/metrics") as resp:
        text = await resp.text()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def stop(proc: Proc) -> list[dict[str, object]]:
    proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.popen.wait, 15) == 0
    return proc.lines()


# --- 1. a failure seen within a second -------------------------------------------------

async def test_upstream_503s_on_a_gated_route_reveal_a_dead_runner_within_2s(
        tmp_path: Path, start_standin: StartStandIn, procs: list[Proc]) -> None:
    runner = StandIn(docker_runner())
    await runner.start()
    upstream = await start_standin(platform_server(runner))
    port = free_port()
    proc = Proc("serve", "--config",
                str(write_config(tmp_path, upstream.url, runner.url, port)))
    procs.append(proc)
    try:
        await wait_live(port)
        async with aiohttp.ClientSession() as http:
            await wait_status(http, port, "up")
            await asyncio.sleep(1.2)  # on-demand probes come at most once a second
            # Without admin_port, the maintenance endpoints are not there: 404, no change.
            for method in ("POST", "DELETE"):
                async with http.request(method, f"http://127.0.0.1:{port}{MAINTENANCE}") as r:
                    assert r.status == 404
                    assert (await r.json())["error"]["code"] == "not_found"
            assert (await dependency(http, port))["maintenance"] is None
            await runner.stop()  # docker-runner dies just after its probe (interval 30 s)
            stopped = time.monotonic()
            upstream_503 = 0
            while True:
                async with http.get(f"http://127.0.0.1:{port}{GATED}") as resp:
                    body = orjson.loads(await resp.read())
                    assert resp.status == 503
                    if body == OWN_503:
                        break
                    upstream_503 += 1  # the platform-server's own, passed on unchanged
                    assert body == {"error": "docker-runner unavailable"}
                assert time.monotonic() - stopped < 2.0, "not gated within 2 s"
                await asyncio.sleep(0.05)
            assert upstream_503 >= 1
    finally:
        await runner.stop()
    lines = await stop(proc)
    passive = [line for line in lines if line["event"] == "probe_failed"
               and line.get("trigger") == "upstream_status"]
    assert len(passive) == 1 and passive[0]["level"] == "ERROR"
    assert passive[0]["status"] == "down"


# --- 2. maintenance by hand --------------------------------------------------------------

async def test_maintenance_on_the_admin_port_with_a_token_survives_a_reload(
        tmp_path: Path, recorder: tuple[Recorder, StandIn], runner: StandIn,
        procs: list[Proc]) -> None:
    seen, upstream = recorder
    port, admin = free_port(), free_port()
    config = write_config(tmp_path, upstream.url, runner.url, port, admin_port=admin)
    proc = Proc("serve", "--config", str(config), env={"GATEPROXY_ADMIN_TOKEN": TOKEN})
    procs.append(proc)
    await wait_live(admin)
    control = f"http://127.0.0.1:{admin}{MAINTENANCE}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        await wait_status(http, admin, "up")
        # On the proxy's port the same path is an ordinary path: forwarded, no change.
        async with http.post(f"http://127.0.0.1:{port}{MAINTENANCE}") as resp:
            assert resp.status == 200 and ("POST", MAINTENANCE) in seen.seen
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with http.post(control, headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "unauthorized"
        async with http.delete(control) as resp:
            assert resp.status == 401
        assert (await dependency(http, admin))["maintenance"] is None
        async with http.post(f"http://127.0.0.1:{admin}/_gateproxy/dependencies/nope/"
                             "maintenance", headers=auth) as resp:
            assert resp.status == 404
        async with http.post(control, headers=auth, data=b"[1]") as resp:
            assert resp.status == 400
        async with http.post(control, headers=auth, json={"reason": "runner upgrade"}) as resp:
            assert resp.status == 200
            snapshot = await resp.json()
        assert snapshot["name"] == "docker-runner" and snapshot["status"] == "up"
        assert snapshot["maintenance"]["reason"] == "runner upgrade"
        assert snapshot["maintenance"]["since"].endswith("Z")
        # Gated routes: the usual 503, body and code; the probes still say up.
        async with http.get(f"http://127.0.0.1:{port}{GATED}/c1") as resp:
            assert resp.status == 503 and orjson.loads(await resp.read()) == OWN_503
        async with http.get(f"http://127.0.0.1:{port}/api/threads") as resp:
            assert resp.status == 200
        _, health = await get_json(http, f"http://127.0.0.1:{port}/health")
        assert isinstance(health, dict)
        assert health["dependencies"]["dockerRunner"]["maintenance"] == snapshot["maintenance"]
        assert health["dependencies"]["dockerRunner"]["status"] == "up"
        assert await metric(http, admin, 'gateproxy_dependency_maintenance'
                                         '{dependency="docker-runner"}') == 1.0
        async with http.get(f"http://127.0.0.1:{admin}/_gateproxy/status") as resp:
            assert "runner upgrade" in await resp.text()
        # A reload (a live setting changed, then SIGHUP) keeps the maintenance.
        config.write_text(config.read_text() + "    hold_ms: 10\n")
        proc.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while (await get_json(http, f"http://127.0.0.1:{admin}/_gateproxy/status.json")
               )[1]["config"]["version"] != 2:  # type: ignore[index]
            assert time.monotonic() < deadline, "the reload was not applied"
            await asyncio.sleep(0.05)
        assert (await dependency(http, admin))["maintenance"] == snapshot["maintenance"]
        async with http.get(f"http://127.0.0.1:{port}{GATED}") as resp:
            assert resp.status == 503
        async with http.delete(control, headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["maintenance"] is None
        async with http.get(f"http://127.0.0.1:{port}{GATED}") as resp:
            assert resp.status == 200, "gated routes follow the probes again"
    lines = await stop(proc)
    changes = [(line["event"], line["level"], line["dependency"], line["reason"])
               for line in lines if str(line["event"]).startswith("maintenance_")]
    assert changes == [("maintenance_started", "WARNING", "docker-runner", "runner upgrade"),
                       ("maintenance_ended", "WARNING", "docker-runner", "runner upgrade")]
    assert all(TOKEN not in orjson.dumps(line).decode() for line in lines)


# --- 3. ride out a short restart ---------------------------------------------------------

async def test_a_held_request_is_forwarded_when_the_runner_is_back_within_hold_ms(
        tmp_path: Path, start_standin: StartStandIn, procs: list[Proc]) -> None:
    runner = StandIn(docker_runner(), port=free_port())
    upstream = await start_standin(platform_server(runner))
    port = free_port()
    # A long backoff: only the rechecks for held requests can see the runner come back.
    proc = Proc("serve", "--config", str(write_config(
        tmp_path, upstream.url, runner.url, port, base_delay_ms=20000, hold_ms=3000)))
    procs.append(proc)
    try:
        await wait_live(port)
        async with aiohttp.ClientSession() as http:
            await wait_status(http, port, "down")
            # Staying down: the 503 after about hold_ms.
            started = time.monotonic()
            async with http.get(f"http://127.0.0.1:{port}{GATED}") as resp:
                waited = time.monotonic() - started
                assert resp.status == 503 and orjson.loads(await resp.read()) == OWN_503
            assert 2.9 <= waited < 4.0, waited
            # Back 1 s after the request arrived: forwarded, the upstream's 200.
            request = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}{GATED}"))
            started = time.monotonic()
            await asyncio.sleep(1.0)
            await runner.start()
            async with await request as resp:
                waited = time.monotonic() - started
                assert resp.status == 200
                assert (await resp.json())["items"][0]["id"] == "c1"
            assert 1.0 <= waited < 2.9, waited
            outcomes = {outcome: await metric(
                http, port, f'gateproxy_hold_outcomes_total{{dependency="docker-runner",'
                            f'outcome="{outcome}"}}') for outcome in ("forwarded", "timed_out")}
            assert outcomes == {"forwarded": 1.0, "timed_out": 1.0}
    finally:
        await runner.stop()
    lines = await stop(proc)
    # The held requests' probes: about one a second, never a flood.
    held = [line for line in lines if line["event"] == "probe_failed"
            and line.get("trigger") == "held_request"]
    assert len(held) <= 5


async def test_past_hold_max_requests_the_503_comes_at_once(
        tmp_path: Path, start_standin: StartStandIn, procs: list[Proc]) -> None:
    runner = StandIn(docker_runner(), port=free_port())
    upstream = await start_standin(platform_server(runner))
    port = free_port()
    proc = Proc("serve", "--config", str(write_config(
        tmp_path, upstream.url, runner.url, port, base_delay_ms=20000, hold_ms=15000)))
    procs.append(proc)
    held_gauge = 'gateproxy_held_requests{dependency="docker-runner"}'
    try:
        await wait_live(port)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            await wait_status(http, port, "down")
            url = f"http://127.0.0.1:{port}{GATED}"
            held = [asyncio.ensure_future(http.get(url)) for _ in range(100)]
            deadline = time.monotonic() + 10
            while await metric(http, port, held_gauge) < 100:
                assert time.monotonic() < deadline, "100 requests were not held"
                await asyncio.sleep(0.05)
            started = time.monotonic()
            async with http.get(url) as resp:
                assert resp.status == 503 and orjson.loads(await resp.read()) == OWN_503
            assert time.monotonic() - started < 0.5, "the 101st was held"
            # A client that goes away frees its slot.
            held.pop().cancel()
            while await metric(http, port, held_gauge) != 99:
                assert time.monotonic() < deadline, "the slot was not freed"
                await asyncio.sleep(0.05)
            # The runner comes back: every held request is forwarded.
            await runner.start()
            for response in await asyncio.gather(*held):
                assert response.status == 200
                response.release()
            assert time.monotonic() - started < 5.0
            assert await metric(http, port, held_gauge) == 0
            assert await metric(http, port, 'gateproxy_hold_outcomes_total{dependency='
                                            '"docker-runner",outcome="cancelled"}') == 1.0
    finally:
        await runner.stop()
    await stop(proc)


async def test_upgrades_and_expect_100_are_held_before_any_101_or_100(
        tmp_path: Path, start_standin: StartStandIn, procs: list[Proc]) -> None:
    runner = StandIn(docker_runner(), port=free_port())
    upstream = await start_standin(platform_server(runner))
    port = free_port()
    proc = Proc("serve", "--config", str(write_config(
        tmp_path, upstream.url, runner.url, port, base_delay_ms=20000, hold_ms=8000,
        gated=f"{GATED}, /api/echo")))
    procs.append(proc)
    try:
        await wait_live(port)
        async with aiohttp.ClientSession() as http:
            await wait_status(http, port, "down")
            ws = asyncio.ensure_future(http.ws_connect(f"http://127.0.0.1:{port}/api/echo/ws"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST {GATED}/c1/terminal/sessions HTTP/1.1\r\nHost: p\r\n"
                         "Content-Type: application/json\r\nContent-Length: 2\r\n"
                         "Expect: 100-continue\r\n\r\n".encode())
            deadline = time.monotonic() + 5
            while await metric(http, port, 'gateproxy_held_requests'
                                           '{dependency="docker-runner"}') < 2:
                assert time.monotonic() < deadline, "not held"
                await asyncio.sleep(0.05)
            assert not ws.done(), "the upgrade was answered while held"
            with pytest.raises(TimeoutError):  # nothing, not even a 100, while held
                await asyncio.wait_for(reader.read(1), 0.3)
            await runner.start()
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(b"{}")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 201")
            writer.close()
            socket = await asyncio.wait_for(ws, 5)
            await socket.send_str("hello")
            assert (await socket.receive_str()) == "hello"
            await socket.close()
    finally:
        await runner.stop()
    await stop(proc)
