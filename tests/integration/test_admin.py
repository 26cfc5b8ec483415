"""The proxy's own endpoints: live, ready through the shutdown sequence, the admin port
split, status.json, no secrets anywhere, and the optional access log."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateproxy.demo.standins import StandIn
from tests.support import rawclient
from tests.support.gateways import MakeGateway, env_for, url
from tests.support.json_logs import log_lines
from tests.support.ports import free_port
from tests.support.standins import Recorder, StartStandIn
from tests.support.waiting import wait_for

ADMIN_PATHS = ("live", "ready", "status", "status.json", "metrics")


async def test_ready_turns_503_first_while_everything_else_is_served(
        runner: StandIn, recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    gateway = await make_gateway(env_for(upstream, runner.url))
    live = url(gateway, "/_gateproxy/live")
    async with http.get(url(gateway, "/_gateproxy/ready")) as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ready"}
    stopping = asyncio.get_running_loop().create_task(gateway.stop(delay_s=1.0))
    await wait_for(lambda: gateway.node.draining)
    async with http.get(url(gateway, "/_gateproxy/ready")) as resp:
        assert resp.status == 503
        assert await resp.json() == {"status": "not_ready", "reason": "shutting_down"}
    async with http.get(live) as resp:
        assert resp.status == 200
    async with http.get(url(gateway, "/api/threads")) as resp:
        assert resp.status == 200, "still forwarding during the shutdown delay"
    async with http.get(url(gateway, "/_gateproxy/status.json")) as resp:
        state = await resp.json()
    assert state["draining"] is True and state["ready"] is False
    assert not stopping.done()
    await stopping
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(live):
            pass


async def test_admin_port_has_every_admin_endpoint_and_the_proxy_port_none(
        tmp_path: Path, runner: StandIn, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    rec, upstream = recorder
    path = tmp_path / "gp.yaml"
    path.write_text(f"admin_port: {free_port()}\n")
    gateway = await make_gateway(env_for(upstream, runner.url), str(path))
    assert gateway.admin_port is not None and gateway.admin_port != gateway.port
    admin = f"http://127.0.0.1:{gateway.admin_port}"
    for name in ADMIN_PATHS:
        async with http.get(f"{admin}/_gateproxy/{name}") as resp:
            assert resp.status == 200, name
    async with http.get(f"{admin}/_gateproxy/status") as resp:
        assert resp.content_type == "text/html"
    async with http.get(f"{admin}/_gateproxy/metrics") as resp:
        assert "gateproxy_dependency_up" in await resp.text()
    async with http.get(f"{admin}/api/threads") as resp:
        assert resp.status == 404, "the admin port forwards nothing"
    for name in ADMIN_PATHS:
        async with http.get(url(gateway, f"/_gateproxy/{name}")) as resp:
            assert await resp.json() == {"echo": f"/_gateproxy/{name}"}, name
    assert rec.seen == [("GET", f"/_gateproxy/{name}") for name in ADMIN_PATHS], (
        "on the proxy port the admin paths are the upstream's like any other")
    async with http.get(url(gateway, "/health")) as resp:
        assert resp.status == 200, "/health stays on the proxy port"


async def test_without_admin_port_admin_endpoints_are_on_the_proxy_port(
        runner: StandIn, recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    rec, upstream = recorder
    gateway = await make_gateway(env_for(upstream, runner.url))
    assert gateway.admin_port is None
    for name in ADMIN_PATHS:
        async with http.get(url(gateway, f"/_gateproxy/{name}")) as resp:
            assert resp.status == 200, name
    assert rec.seen == []


@pytest.mark.parametrize(("method", "target"), [
    ("GET", "/_gateproxy/nope"), ("GET", "/_gateproxy"), ("GET", "/_gateproxy/"),
    ("POST", "/_gateproxy/live"), ("DELETE", "/_gateproxy/metrics/x"),
    ("GET", "/_gateproxy/live/"), ("GET", "/x/../_gateproxy/api/containers"),
    ("GET", "/_gateproxy/%2e%2e/_gateproxy/secret"), ("PUT", "/_GATEPROXY/anything?q=1"),
])
async def test_unknown_paths_under_the_admin_prefix_get_the_proxys_404(
        runner: StandIn, recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        method: str, target: str) -> None:
    rec, upstream = recorder
    gateway = await make_gateway(env_for(upstream, runner.url))
    resp = await rawclient.exchange(gateway.port, rawclient.build(target, method))
    assert resp.status == 404, (target, resp.body)
    assert orjson.loads(resp.body)["error"]["code"] == "not_found"
    assert rec.seen == [], "the admin prefix belongs to the proxy: never forwarded"


async def test_status_json_carries_what_the_page_shows(
        start_standin: StartStandIn, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    from gateproxy.demo.standins import docker_runner

    _, upstream = recorder
    runner = await start_standin(docker_runner())
    gateway = await make_gateway(env_for(upstream, runner.url))
    await wait_for(lambda: gateway.node.guards[0].status.is_up)
    await runner.stop()
    await wait_for(lambda: not gateway.node.guards[0].status.is_up)
    async with http.get(url(gateway, "/_gateproxy/status.json")) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        state = await resp.json()
    assert state["service"] == "gateproxy"
    assert state["ready"] is True, "an optional dependency does not make it unready"
    assert state["config"]["version"] == 1
    assert len(state["config"]["hash"]) == 16
    assert state["config"]["source"] == "defaults"
    assert state["config"]["pendingRestart"] == []
    [dep] = state["dependencies"]
    assert dep["name"] == "docker-runner" and dep["healthKey"] == "dockerRunner"
    assert dep["status"] == "down"
    assert dep["lastError"]["code"] == "connection_refused"
    assert dep["nextRetryAt"] is not None
    assert dep["consecutiveFailures"] >= 1 and dep["totalChecks"] >= 2
    assert dep["gatedRoutes"] == [{"prefix": "/api/containers", "methods": None}]
    assert [(t["from"], t["to"]) for t in dep["transitions"]] == [
        ("up", "down"), ("unknown", "up")], "newest first"
    assert dep["transitions"][0]["error"]["code"] == "connection_refused"


async def test_transitions_keep_the_last_50(
        start_standin: StartStandIn, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    from gateproxy.demo.standins import docker_runner

    _, upstream = recorder
    runner = await start_standin(docker_runner())
    gateway = await make_gateway(env_for(upstream, runner.url,
                                         DOCKER_RUNNER_CONNECT_PROBE_INTERVAL_MS="20",
                                         DOCKER_RUNNER_CONNECT_RETRY_BASE_DELAY_MS="1",
                                         DOCKER_RUNNER_CONNECT_RETRY_MAX_DELAY_MS="20"))
    status = gateway.node.guards[0].status
    for _ in range(27):
        await wait_for(lambda: status.is_up)
        await runner.stop()
        await wait_for(lambda: not status.is_up)
        await runner.start()
    async with http.get(url(gateway, "/_gateproxy/status.json")) as resp:
        transitions = (await resp.json())["dependencies"][0]["transitions"]
    assert len(transitions) == 50
    assert transitions[0]["to"] == "down"
    assert transitions[-1]["from"] != "unknown", "the oldest ones are gone"


async def test_no_secret_or_credential_is_shown(
        start_standin: StartStandIn, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    from gateproxy.demo.standins import docker_runner

    _, upstream = recorder
    runner = await start_standin(docker_runner())
    secret = "s3cret-shared-value-that-must-not-leak"
    gateway = await make_gateway(env_for(
        upstream, f"http://operator:hunter2-password@127.0.0.1:{runner.port}",
        DOCKER_RUNNER_SHARED_SECRET=secret))
    await wait_for(lambda: gateway.node.guards[0].status.total_checks > 0)
    for path, headers in [("/_gateproxy/status", {}), ("/_gateproxy/status.json", {}),
                          ("/_gateproxy/metrics", {}), ("/health", {}),
                          ("/health", {"Accept": "application/health+json"})]:
        async with http.get(url(gateway, path), headers=headers) as resp:
            text = await resp.text()
        assert resp.status == 200, path
        for leak in (secret, "hunter2", "operator:"):
            assert leak not in text, (path, leak)
    async with http.get(url(gateway, "/_gateproxy/status.json")) as resp:
        assert (await resp.json())["dependencies"][0]["baseUrl"] == runner.url


async def test_access_log_lines_when_enabled(
        captured_logs: io.StringIO, tmp_path: Path, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    path = tmp_path / "gp.yaml"
    path.write_text("log: {access: true}\n")
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"),
                                 str(path))
    async with http.get(url(gateway, "/api/threads?token=abc")) as resp:
        forwarded_body = await resp.read()
    async with http.post(url(gateway, "/api/containers/x")) as resp:
        assert resp.status == 503
    async with http.get(url(gateway, "/_gateproxy/live")) as resp:
        assert resp.status == 200
    await wait_for(lambda: sum(
        line["event"] == "access" for line in log_lines(captured_logs)) == 3)
    lines = [line for line in log_lines(captured_logs) if line["event"] == "access"]
    forwarded, gated, local = lines
    assert forwarded["method"] == "GET" and forwarded["path"] == "/api/threads"
    assert forwarded["status"] == 200 and forwarded["outcome"] == "forwarded"
    assert isinstance(forwarded["bytes"], int) and forwarded["bytes"] > len(forwarded_body)
    assert isinstance(forwarded["durationMs"], float) and forwarded["durationMs"] >= 0
    assert forwarded["level"] == "INFO" and "time" in forwarded
    assert "abc" not in str(forwarded), "query strings (tokens) are not logged"
    assert (gated["method"], gated["path"], gated["status"], gated["outcome"]) == (
        "POST", "/api/containers/x", 503, "gated")
    assert (local["path"], local["status"], local["outcome"]) == (
        "/_gateproxy/live", 200, "local")


async def test_no_access_log_by_default(
        captured_logs: io.StringIO, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"))
    async with http.get(url(gateway, "/api/threads")) as resp:
        assert resp.status == 200
    async with http.get(url(gateway, "/_gateproxy/live")) as resp:
        assert resp.status == 200
    assert not [line for line in log_lines(captured_logs) if line["event"] == "access"]
