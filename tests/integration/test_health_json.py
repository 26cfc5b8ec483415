"""/health content negotiation: `Accept: application/health+json` gets the IETF draft
"Health Check Response Format for HTTP APIs"; anything else the default JSON."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateproxy.demo.standins import StandIn, docker_runner
from gateproxy.views.health import wants_health_json
from tests.support.gateways import MakeGateway, env_for, url
from tests.support.ports import free_port
from tests.support.standins import Recorder, StartStandIn
from tests.support.waiting import wait_for

HEALTH_JSON = {"Accept": "application/health+json"}
ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def routes_file(tmp_path: Path) -> str:
    path = tmp_path / "gp.yaml"
    path.write_text("""\
dependencies:
  - name: docker-runner
    health_key: dockerRunner
    base_url: http://127.0.0.1:1
    gated_routes:
      - /api/containers
      - {prefix: /test/workspaces, methods: [POST]}
      - {prefix: /api/containers, methods: [DELETE]}
""")
    return str(path)


async def get(http: aiohttp.ClientSession, target: str,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with http.get(target, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


@pytest.mark.parametrize(("accept", "expected"), [
    ("application/health+json", True),
    ("application/health+json, application/json;q=0.9", True),
    ("application/json, application/health+json;q=0.5", False),
    ("*/*;q=0.1, application/health+json", True),
    ("application/health+json, */*", True),
    ("application/health+json;q=0", False),
    ("APPLICATION/HEALTH+JSON", True),
    ("application/json", False),
    ("", False),
    ("application/health+json;q=oops", False),
])
def test_accept_negotiation(accept: str, expected: bool) -> None:
    assert wants_health_json(accept) is expected


async def test_optional_dependency_down_is_warn_with_affected_endpoints(
        tmp_path: Path, recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"),
                                 routes_file(tmp_path))
    await wait_for(lambda: gateway.node.guards[0].status.total_checks > 0)
    code, headers, body = await get(http, url(gateway, "/health"), HEALTH_JSON)
    assert code == 200
    assert headers["Content-Type"] == "application/health+json"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Vary"] == "Accept"
    assert body["status"] == "warn", "an optional dependency down is a warning, not a failure"
    assert set(body["checks"]) == {"upstream:health", "docker-runner:readiness"}
    [check] = body["checks"]["docker-runner:readiness"]
    assert check["status"] == "fail"
    assert check["componentType"] == "component"
    assert check["affectedEndpoints"] == ["/api/containers", "/test/workspaces"]
    assert check["output"].startswith("connection_refused: ")
    assert check["observedUnit"] == "ms" and isinstance(check["observedValue"], int)
    assert check["time"].endswith("Z")
    [upstream_check] = body["checks"]["upstream:health"]
    assert upstream_check["status"] == "pass"
    assert upstream_check["observedValue"] == 200

    code, headers, body = await get(http, url(gateway, "/health"))
    assert code == 200
    assert headers["Content-Type"] == "application/json", "the default stays plain JSON"
    assert body["dependencies"]["dockerRunner"]["status"] == "down"


async def test_everything_up_is_pass(runner: StandIn, recorder: tuple[Recorder, StandIn],
                                     make_gateway: MakeGateway,
                                     http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    gateway = await make_gateway(env_for(upstream, runner.url))
    await wait_for(lambda: gateway.node.guards[0].status.is_up)
    code, _, body = await get(http, url(gateway, "/health"), HEALTH_JSON)
    assert code == 200
    assert body["status"] == "pass"
    [check] = body["checks"]["docker-runner:readiness"]
    assert check["status"] == "pass"
    assert "output" not in check
    assert check["affectedEndpoints"] == ["/api/containers"]


async def test_required_dependency_down_is_fail_503(
        start_standin: StartStandIn, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    runner = await start_standin(docker_runner())
    gateway = await make_gateway(env_for(upstream, runner.url, DOCKER_RUNNER_OPTIONAL="false"))
    await runner.stop()
    await wait_for(lambda: not gateway.node.guards[0].status.is_up)
    code, headers, body = await get(http, url(gateway, "/health"), HEALTH_JSON)
    assert code == 503
    assert headers["Content-Type"] == "application/health+json"
    assert body["status"] == "fail"
    assert body["checks"]["docker-runner:readiness"][0]["status"] == "fail"


async def test_upstream_down_is_fail_503(runner: StandIn, make_gateway: MakeGateway,
                                         http: aiohttp.ClientSession) -> None:
    dead = StandIn(web.Application(), port=free_port())
    gateway = await make_gateway(env_for(dead, runner.url))
    await wait_for(lambda: gateway.node.guards[0].status.is_up)
    code, _, body = await get(http, url(gateway, "/health"), HEALTH_JSON)
    assert code == 503
    assert body["status"] == "fail"
    [upstream_check] = body["checks"]["upstream:health"]
    assert upstream_check["status"] == "fail"
    assert upstream_check["output"].startswith("upstream_unavailable: ")
    assert "observedValue" not in upstream_check
    assert body["checks"]["docker-runner:readiness"][0]["status"] == "pass"


async def test_head_health_is_answered_by_gateproxy(
        runner: StandIn, recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    rec, upstream = recorder
    gateway = await make_gateway(env_for(upstream, runner.url))
    async with http.head(url(gateway, "/health"), headers=HEALTH_JSON) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/health+json"
    assert rec.seen == [("GET", "/health")], "asked its own health, HEAD not forwarded"


def platform_health() -> web.Application:
    """A platform-server whose /health sends no `timestamp`: gateproxy adds its own."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    return app


def assert_recent_iso(value: Any) -> None:
    assert isinstance(value, str) and ISO_MS_Z.fullmatch(value), value
    at = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(at.timestamp() - time.time()) < 60


async def test_health_has_the_platform_servers_error_while_refused_and_none_once_up(
        start_standin: StartStandIn, make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    upstream = await start_standin(platform_health())
    port = free_port()
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{port}"))
    status = gateway.node.guards[0].status
    await wait_for(lambda: status.total_checks > 0)
    code, _, body = await get(http, url(gateway, "/health"))
    assert code == 200
    assert_recent_iso(body["timestamp"])
    runner = body["dependencies"]["dockerRunner"]
    assert runner["status"] == "down"
    assert runner["endpoint"] == f"http://127.0.0.1:{port}/v1/ready"
    error = runner["error"]
    assert error["errorCode"] == runner["lastError"]["code"] == "connection_refused"
    assert error["message"] == runner["lastError"]["message"]
    assert error["name"] == "DependencyProbeError"
    assert error["retryable"] is True
    assert "statusCode" not in error, "refused: no HTTP answer"

    await start_standin(docker_runner(), port=port)
    await wait_for(lambda: status.is_up)
    code, _, body = await get(http, url(gateway, "/health"))
    assert code == 200
    assert_recent_iso(body["timestamp"])
    runner = body["dependencies"]["dockerRunner"]
    assert runner["status"] == "up" and runner["lastError"] is None
    assert "error" not in runner


async def test_a_rejected_signature_is_not_retryable(
        start_standin: StartStandIn, make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    async def unauthorized(_: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "bad signature"}}, status=401)

    runner_app = web.Application()
    runner_app.router.add_get("/v1/ready", unauthorized)
    runner = await start_standin(runner_app)
    upstream = await start_standin(platform_health())
    gateway = await make_gateway(env_for(upstream, runner.url))
    await wait_for(lambda: gateway.node.guards[0].status.total_checks > 0)
    _, _, body = await get(http, url(gateway, "/health"))
    assert body["dependencies"]["dockerRunner"]["error"] == {
        "name": "DependencyProbeError", "message": "bad signature", "statusCode": 401,
        "errorCode": "http_401", "retryable": False}
