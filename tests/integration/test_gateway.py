"""The gate end to end: a real Gateway between real stand-in servers on 127.0.0.1.

Covers the seed's test plan 1-6 (start without docker-runner, gated routes, recovery,
logs, unchanged behaviour when up, spellings) and the finer rules of section 5.
"""

from __future__ import annotations

import asyncio
import io
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateproxy.demo.standins import StandIn, docker_runner
from tests.support import rawclient
from tests.support.corpora import GATED_SPELLINGS
from tests.support.gateways import MakeGateway, env_for, url
from tests.support.json_logs import log_lines
from tests.support.own_answers import NOT_READY
from tests.support.ports import free_port
from tests.support.standins import Recorder, StartStandIn
from tests.support.waiting import wait_for


async def test_boots_without_docker_runner_and_health_shows_it_down(
        recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"))
    async with http.get(url(gateway, "/_gateproxy/live")) as resp:
        assert resp.status == 200
    await wait_for(lambda: gateway.node.guards[0].status.total_checks > 0)
    async with http.get(url(gateway, "/health")) as resp:
        assert resp.status == 200, "an optional dependency down never makes /health an error"
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    assert body["status"] == "ok"
    assert body["dependencies"]["postgres"] == {"status": "up"}, "upstream's own keys kept"
    assert "timestamp" in body
    runner = body["dependencies"]["dockerRunner"]
    assert runner["status"] == "down"
    assert runner["optional"] is True
    assert runner["lastError"]["code"] == "connection_refused"
    assert runner["consecutiveFailures"] >= 1
    async with http.head(url(gateway, "/health")) as resp:
        assert resp.status == 200 and await resp.read() == b""


async def test_gated_routes_answer_503_and_never_reach_the_upstream(
        recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    rec, upstream = recorder
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"))
    for method, path in [("GET", "/api/containers"), ("HEAD", "/api/containers"),
                         ("DELETE", "/api/containers/abc"),
                         ("POST", "/api/containers/ws1/terminal/sessions"),
                         ("GET", "/api/containers/abc/events?limit=5")]:
        async with http.request(method, url(gateway, path)) as resp:
            assert resp.status == 503, (method, path)
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.headers["Cache-Control"] == "no-store"
            assert int(resp.headers["Retry-After"]) >= 1
            assert await resp.read() == (b"" if method == "HEAD" else NOT_READY)
    assert rec.seen == []
    async with http.get(url(gateway, "/api/threads")) as resp:
        assert resp.status == 200
        assert (await resp.json())["items"][0]["id"] == "t1"
    async with http.get(url(gateway, "/api/containersx")) as resp:
        assert resp.status == 200
    assert rec.seen == [("GET", "/api/threads"), ("GET", "/api/containersx")]


async def test_recovery_without_restart_and_within_a_second_under_traffic(
        recorder: tuple[Recorder, StandIn], start_standin: StartStandIn,
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    port = free_port()
    # The backoff alone would take 20 s to notice; only the on-demand recheck can be fast.
    gateway = await make_gateway(env_for(
        upstream, f"http://127.0.0.1:{port}",
        DOCKER_RUNNER_CONNECT_RETRY_BASE_DELAY_MS="20000",
        DOCKER_RUNNER_CONNECT_RETRY_MAX_DELAY_MS="20000"))
    await wait_for(lambda: gateway.node.guards[0].status.total_checks > 0)
    async with http.get(url(gateway, "/api/containers")) as resp:
        assert resp.status == 503
    await start_standin(docker_runner(), port=port)
    started = time.monotonic()
    while True:
        async with http.get(url(gateway, "/api/containers")) as resp:
            if resp.status == 200:
                break
        assert time.monotonic() - started < 2.5, "recovery not seen within about a second"
        await asyncio.sleep(0.1)
    assert gateway.node.guards[0].status.state.value == "up"


async def test_failure_logs_carry_retry_metadata_and_recovery_logs_once(
        captured_logs: io.StringIO, recorder: tuple[Recorder, StandIn],
        start_standin: StartStandIn, make_gateway: MakeGateway) -> None:
    _, upstream = recorder
    port = free_port()
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{port}"))
    await wait_for(lambda: gateway.node.guards[0].status.consecutive_failures >= 3)
    failures = [line for line in log_lines(captured_logs) if line["event"] == "probe_failed"]
    assert len(failures) >= 3
    for line in failures:
        assert line["level"] == "ERROR"
        assert line["dependency"] == "docker-runner"
        assert line["baseUrl"] == f"http://127.0.0.1:{port}"
        assert line["errorCode"] == "connection_refused"
        assert isinstance(line["message"], str) and line["message"]
        assert isinstance(line["retryInMs"], int)
        assert isinstance(line["nextRetryAt"], str) and line["nextRetryAt"].endswith("Z")
        assert isinstance(line["time"], str)
    assert [f["consecutiveFailures"] for f in failures[:3]] == [1, 2, 3]
    assert [f["retryInMs"] for f in failures[:3]] == [50, 100, 200]
    await start_standin(docker_runner(), port=port)
    await wait_for(lambda: gateway.node.guards[0].status.is_up)
    recovered = [line for line in log_lines(captured_logs)
                 if line["event"] == "dependency_recovered"]
    assert len(recovered) == 1
    assert recovered[0]["level"] == "INFO"
    assert recovered[0]["baseUrl"] == f"http://127.0.0.1:{port}"
    assert isinstance(recovered[0]["downForMs"], int) and recovered[0]["downForMs"] > 0


async def test_first_gated_request_waits_for_the_first_probe_when_runner_is_up(
        recorder: tuple[Recorder, StandIn], start_standin: StartStandIn,
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    rec, upstream = recorder

    async def slow_ready(_: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/v1/ready", slow_ready)
    runner = await start_standin(app)
    gateway = await make_gateway(env_for(upstream, runner.url))
    assert gateway.node.guards[0].status.state.value == "unknown"
    async with http.get(url(gateway, "/api/containers")) as resp:
        assert resp.status == 200, "the very first gated request is forwarded, not refused"
    assert rec.seen == [("GET", "/api/containers")]


@pytest.mark.parametrize("target", GATED_SPELLINGS)
async def test_no_spelling_of_a_gated_path_reaches_the_upstream(
        target: str, recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway) -> None:
    rec, upstream = recorder
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"))
    resp = await rawclient.exchange(gateway.port, rawclient.build(target))
    if "#" in target:  # a fragment: 400 whatever the path, never forwarded
        assert resp.status == 400, target
        assert orjson.loads(resp.body)["error"]["code"] == "bad_request"
    else:
        assert resp.status == 503, target
        assert resp.body == NOT_READY
    assert rec.seen == []


@pytest.mark.parametrize("target", ["/api/con%00tainers", "/../api/containers",
                                    "/a/%2e%2e/%2e%2e/x", "/a%7fb"])
async def test_hostile_paths_get_400(target: str, recorder: tuple[Recorder, StandIn],
                                     make_gateway: MakeGateway) -> None:
    rec, upstream = recorder
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"))
    resp = await rawclient.exchange(gateway.port, rawclient.build(target))
    assert resp.status == 400
    assert orjson.loads(resp.body)["error"]["code"] == "bad_request"
    assert rec.seen == []


async def test_absolute_form_is_judged_and_forwarded_by_its_path(
        recorder: tuple[Recorder, StandIn], runner: StandIn, make_gateway: MakeGateway) -> None:
    rec, upstream = recorder
    gateway = await make_gateway(env_for(upstream, runner.url))
    # The target's host must be the Host header's (rawhttp sends platform.test): another
    # one gets 400, see tests/hostile/test_hostile_http.py.
    resp = await rawclient.exchange(gateway.port,
                                 rawclient.build("http://platform.test/api//threads?q=1"))
    assert resp.status == 200
    assert rec.seen == [("GET", "/api/threads?q=1")], "forwarded in the form judged"


async def test_cors_preflight_is_forwarded_and_503_carries_allowed_origin(
        recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        tmp_path: object) -> None:
    import pathlib

    rec, upstream = recorder
    path = pathlib.Path(str(tmp_path)) / "c.yaml"
    path.write_text("cors: {allow_origins: ['https://ui.example']}\n")
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"),
                                 str(path))
    preflight = await rawclient.exchange(gateway.port, rawclient.build(
        "/api/containers", "OPTIONS",
        "Origin: https://ui.example\r\nAccess-Control-Request-Method: DELETE\r\n"))
    assert preflight.status != 503
    assert rec.seen == [("OPTIONS", "/api/containers")]
    allowed = await rawclient.exchange(gateway.port, rawclient.build(
        "/api/containers", extra="Origin: https://ui.example\r\n"))
    assert allowed.status == 503
    assert allowed.header("Access-Control-Allow-Origin") == "https://ui.example"
    assert allowed.header("Vary") == "Origin"
    other = await rawclient.exchange(gateway.port, rawclient.build(
        "/api/containers", extra="Origin: https://evil.example\r\n"))
    assert other.status == 503 and other.header("Access-Control-Allow-Origin") is None
    plain_options = await rawclient.exchange(gateway.port,
                                             rawclient.build("/api/containers", "OPTIONS"))
    assert plain_options.status == 503, "only a real preflight passes"


async def test_expect_100_continue_gets_the_503_before_the_body(
        recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway) -> None:
    rec, upstream = recorder
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"))
    head = (b"POST /api/containers/x/terminal/sessions HTTP/1.1\r\nHost: p\r\n"
            b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
    resp = await rawclient.exchange(gateway.port, head)  # the body is never sent
    assert resp.status == 503
    assert resp.body == NOT_READY
    assert resp.header("Connection") == "close"
    assert rec.seen == []


async def test_expect_100_continue_on_a_forwarded_path_still_works(
        recorder: tuple[Recorder, StandIn], runner: StandIn, make_gateway: MakeGateway) -> None:
    rec, upstream = recorder
    gateway = await make_gateway(env_for(upstream, runner.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /api/threads HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    resp = await rawclient.read_exchange(reader, "GET")
    writer.close()
    assert resp.status == 405  # the stand-in has no POST /api/threads: its own answer
    assert rec.seen == [("POST", "/api/threads")]


async def test_websocket_upgrade_on_a_gated_path_gets_the_503_before_any_upgrade(
        recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway) -> None:
    rec, upstream = recorder
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"))
    resp = await rawclient.exchange(gateway.port, rawclient.build(
        "/api/containers/11111111-2222-4333-8444-555555555555/terminal/ws?sessionId=s",
        extra="Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"))
    assert resp.status == 503 and resp.body == NOT_READY
    assert rec.seen == []


async def test_retries_exhausted_stop_probing_but_keep_serving(
        captured_logs: io.StringIO, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}",
                                         DOCKER_RUNNER_CONNECT_MAX_RETRIES="3"))
    status = gateway.node.guards[0].status
    await wait_for(lambda: status.retries_exhausted)
    for _ in range(3):
        async with http.get(url(gateway, "/api/containers")) as resp:
            assert resp.status == 503
        await asyncio.sleep(0.4)  # longer than the recheck interval would need
    assert status.total_checks == 3, "no probe after exhaustion, not even on demand"
    exhausted = [line for line in log_lines(captured_logs)
                 if line["event"] == "retries_exhausted"]
    assert len(exhausted) == 1
    assert exhausted[0]["consecutiveFailures"] == 3 and exhausted[0]["maxRetries"] == 3
    async with http.get(url(gateway, "/api/threads")) as resp:
        assert resp.status == 200


async def test_upstream_down_gives_502_and_health_503(
        runner: StandIn, make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    dead = StandIn(web.Application(), port=free_port())
    gateway = await make_gateway(env_for(dead, runner.url))
    async with http.get(url(gateway, "/api/threads")) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unavailable"
    await wait_for(lambda: gateway.node.guards[0].status.is_up)
    async with http.get(url(gateway, "/health")) as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["status"] == "error"
    assert body["upstream"]["status"] == "down"
    assert body["upstream"]["error"]["code"] == "upstream_unavailable"
    assert body["dependencies"]["dockerRunner"]["status"] == "up"


async def test_health_wraps_a_non_json_upstream_answer(
        start_standin: StartStandIn, runner: StandIn, make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    async def plain(_: web.Request) -> web.Response:
        return web.Response(text="OK", status=200)

    app = web.Application()
    app.router.add_get("/health", plain)
    upstream = await start_standin(app)
    gateway = await make_gateway(env_for(upstream, runner.url))
    async with http.get(url(gateway, "/health")) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok"
    assert body["upstream"] == {"status": "up", "statusCode": 200}
    assert set(body["dependencies"]) == {"dockerRunner"}


async def test_a_required_dependency_down_turns_health_and_ready_into_503(
        recorder: tuple[Recorder, StandIn], start_standin: StartStandIn,
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    runner = await start_standin(docker_runner())
    gateway = await make_gateway(env_for(upstream, runner.url, DOCKER_RUNNER_OPTIONAL="false"))
    async with http.get(url(gateway, "/_gateproxy/ready")) as resp:
        assert resp.status == 200
    await runner.stop()
    await wait_for(lambda: not gateway.node.guards[0].status.is_up)
    async with http.get(url(gateway, "/_gateproxy/ready")) as resp:
        assert resp.status == 503
    async with http.get(url(gateway, "/health")) as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "error"


async def test_admin_port_serves_admin_only_there(
        recorder: tuple[Recorder, StandIn], runner: StandIn, make_gateway: MakeGateway,
        http: aiohttp.ClientSession, tmp_path: object) -> None:
    import pathlib

    rec, upstream = recorder
    path = pathlib.Path(str(tmp_path)) / "a.yaml"
    path.write_text(f"admin_port: {free_port()}\n")
    gateway = await make_gateway(env_for(upstream, runner.url), str(path))
    async with http.get(f"http://127.0.0.1:{gateway.admin_port}/_gateproxy/live") as resp:
        assert resp.status == 200
    async with http.get(url(gateway, "/_gateproxy/live")) as resp:
        assert resp.status == 200 and (await resp.json()) == {"echo": "/_gateproxy/live"}
    assert rec.seen == [("GET", "/_gateproxy/live")], "the main port forwards it upstream"


async def test_probe_is_signed_when_a_shared_secret_is_set(
        recorder: tuple[Recorder, StandIn], start_standin: StartStandIn,
        make_gateway: MakeGateway) -> None:
    from gateproxy.monitor.probe import sign

    seen: list[dict[str, str]] = []

    async def ready(request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        seen.append(headers)
        expected = sign("dev-shared-secret", request.method, request.raw_path,
                        int(headers["x-dr-timestamp"]), headers["x-dr-nonce"])
        if expected["x-dr-signature"] != headers["x-dr-signature"]:
            return web.json_response({"error": {"code": "invalid_signature"}}, status=401)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/v1/ready", ready)
    runner = await start_standin(app)
    _, upstream = recorder
    gateway = await make_gateway(env_for(upstream, runner.url,
                                         DOCKER_RUNNER_SHARED_SECRET="dev-shared-secret"))
    await wait_for(lambda: gateway.node.guards[0].status.is_up)
    assert abs(int(seen[0]["x-dr-timestamp"]) - time.time() * 1000) < 60000
    assert len(seen[0]["x-dr-nonce"]) == 36
