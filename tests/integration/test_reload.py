"""Live reload: from the file watcher, from SIGHUP, from a bad file (rejected), and while
requests flow (none fails)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateproxy import logs
from gateproxy.config import settings
from gateproxy.demo.standins import StandIn, docker_runner
from gateproxy.monitor.signing import HEADERS, sign
from gateproxy.serve.gateway import Gateway
from gateproxy.serve.reload import Reloader
from tests.support.gateways import MakeGateway, env_for, url
from tests.support.json_logs import log_lines
from tests.support.metric_samples import exposition, parse
from tests.support.own_answers import NOT_READY
from tests.support.ports import free_port
from tests.support.processes import Proc, wait_live
from tests.support.standins import Recorder, StartStandIn
from tests.support.waiting import wait_for

ORIGIN = "https://app.example"


def write(path: Path, runner_url: str, routes: tuple[str, ...] = ("/api/containers",), *,
          top: str = "", other: str | None = None, dep: str = "") -> None:
    """A configuration file, replaced at once as editors and Kubernetes do; `other` adds a
    second dependency at that URL gating /api/other."""
    text = f"""\
{top}
dependencies:
  - name: docker-runner
    base_url: "{runner_url}"
    gated_routes: [{", ".join(routes)}]
{dep}
"""
    if other is not None:
        text += f"""\
  - name: other-runner
    base_url: "{other}"
    probe_interval_ms: 100
    gated_routes: [/api/other]
"""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)


async def status_json(http: aiohttp.ClientSession, gateway: Gateway) -> Any:
    async with http.get(url(gateway, "/_gateproxy/status.json")) as resp:
        return await resp.json()


async def test_file_change_reloads_routes_cors_and_probe_settings(
        captured_logs: io.StringIO, tmp_path: Path, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    rec, upstream = recorder
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "gp.yaml"
    write(path, dead, dep="    probe_interval_ms: 200\n    retry: {base_delay_ms: 50}")
    env = {k: v for k, v in env_for(upstream, dead).items()  # these would override the file
           if k not in ("DOCKER_RUNNER_CONNECT_PROBE_INTERVAL_MS",
                        "DOCKER_RUNNER_CONNECT_RETRY_BASE_DELAY_MS")}
    gateway = await make_gateway(env, str(path))
    before = await status_json(http, gateway)
    async with Reloader(gateway.node, env).running():
        await asyncio.sleep(0.2)  # the watcher is up
        write(path, dead, ("/api/containers", "/api/threads"),
              top=f"cors: {{allow_origins: ['{ORIGIN}']}}",
              dep="    probe_interval_ms: 1234\n    retry: {base_delay_ms: 77}")
        await wait_for(lambda: gateway.node.runtime.version.number == 2, timeout=10)
    async with http.get(url(gateway, "/api/threads"), headers={"Origin": ORIGIN}) as resp:
        assert resp.status == 503 and await resp.read() == NOT_READY
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert rec.seen == []
    dep = gateway.node.guards[0].status.dep
    assert dep.probe_interval_ms == 1234 and dep.retry.base_delay_ms == 77
    after = await status_json(http, gateway)
    assert after["config"]["version"] == 2
    assert after["config"]["hash"] != before["config"]["hash"]
    assert after["dependencies"][0]["gatedRoutes"] == [
        {"prefix": "/api/containers", "methods": None},
        {"prefix": "/api/threads", "methods": None}]
    reloaded = [line for line in log_lines(captured_logs) if line["event"] == "config_reloaded"]
    assert reloaded[0]["version"] == 2
    assert reloaded[0]["gatedRoutes"] == {"docker-runner": ["/api/containers", "/api/threads"]}
    assert {line["trigger"] for line in log_lines(captured_logs)
            if line["event"] == "config_reload"} == {"file_changed"}


@pytest.mark.parametrize(("content", "key"), [
    ("dependencies:\n  - name: docker-runner\n    gated_routes: [api/no-slash]\n",
     "dependencies[0].gated_routes[0]"),
    ("listen: {prot: 8080}\n", "listen.prot"),
    ("dependencies: [\n", "(document)"),
    # PyYAML raises ValueError on this date; a reload must survive loader surprises too.
    ("shutdown_delay_ms: 2001-13-45\n", ""),
])
async def test_a_bad_file_is_rejected_and_the_running_config_keeps_serving(
        content: str, key: str, captured_logs: io.StringIO, tmp_path: Path,
        recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    rec, upstream = recorder
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "gp.yaml"
    write(path, dead)
    env = env_for(upstream, dead)
    gateway = await make_gateway(env, str(path))
    running, version = gateway.node.config, gateway.node.runtime.version
    path.write_text(content)
    assert await Reloader(gateway.node, env).reload("test") is False
    assert gateway.node.config is running and gateway.node.runtime.version is version
    [rejected] = [line for line in log_lines(captured_logs)
                  if line["event"] == "config_reload_rejected"]
    assert rejected["level"] == "ERROR"
    assert rejected["runningVersion"] == 1
    problems = rejected["problems"]
    assert isinstance(problems, list)
    assert any(problem.startswith(f"{path}: {key}") for problem in problems), rejected
    async with http.get(url(gateway, "/api/containers")) as resp:
        assert resp.status == 503, "the old routes still gate"
    async with http.get(url(gateway, "/api/threads")) as resp:
        assert resp.status == 200
    assert rec.seen == [("GET", "/api/threads")]
    metrics = exposition(gateway.node.metrics)
    assert 'gateproxy_config_reloads_total{result="rejected"} 1.0' in metrics
    assert 'gateproxy_config_reloads_total{result="applied"} 0.0' in metrics


async def test_routes_and_dependencies_come_and_go_while_requests_flow(
        tmp_path: Path, start_standin: StartStandIn, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway) -> None:
    _, upstream = recorder
    other = await start_standin(docker_runner())
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "gp.yaml"
    write(path, dead)
    env = env_for(upstream, dead)
    gateway = await make_gateway(env, str(path))
    reloader = Reloader(gateway.node, env)
    seen: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    stop = asyncio.Event()

    async def client() -> None:
        # Each path has exactly the answers its configurations allow, whichever is live.
        allowed = {"/api/containers/x": {503}, "/api/threads": {200, 503},
                   "/api/other": {200}}
        connector = aiohttp.TCPConnector(limit=2)
        async with aiohttp.ClientSession(connector=connector) as http:
            while not stop.is_set():
                for target, statuses in allowed.items():
                    try:
                        async with http.get(url(gateway, target)) as resp:
                            body = await resp.read()
                    except (aiohttp.ClientError, OSError) as exc:
                        failures.append(f"{target}: {exc!r}")
                        continue
                    if resp.status not in statuses or (
                            resp.status == 503 and body != NOT_READY):
                        failures.append(f"{target}: {resp.status} {body[:80]!r}")
                    seen[target, resp.status] += 1

    clients = [asyncio.get_running_loop().create_task(client()) for _ in range(6)]
    try:
        for i in range(20):
            if i % 2 == 0:
                write(path, dead, ("/api/containers", "/api/threads"), other=other.url)
            else:
                write(path, dead)
            assert await reloader.reload("test") is True
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert failures == []
    assert seen.total() > 200, "requests flowed all along the reloads"
    assert seen["/api/threads", 200] > 0 and seen["/api/threads", 503] > 0, seen
    assert seen["/api/other", 200] > 0
    assert gateway.node.runtime.version.number == 21
    assert [g.status.dep.name for g in gateway.node.guards] == ["docker-runner"]


async def test_a_new_dependency_starts_its_loop_and_a_removed_one_stops(
        tmp_path: Path, start_standin: StartStandIn, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    rec, upstream = recorder
    other = await start_standin(docker_runner())
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "gp.yaml"
    write(path, dead)
    env = env_for(upstream, dead)
    gateway = await make_gateway(env, str(path))
    reloader = Reloader(gateway.node, env)
    write(path, dead, other=other.url)
    assert await reloader.reload("test")
    added = gateway.node.guards[1]
    assert added.status.dep.name == "other-runner"
    await wait_for(lambda: added.status.total_checks >= 3)
    assert added.status.is_up
    state = await status_json(http, gateway)
    assert [d["name"] for d in state["dependencies"]] == [
        "docker-runner", "other-runner"]
    assert 'gateproxy_dependency_up{dependency="other-runner"} 1.0' in (
        exposition(gateway.node.metrics))

    write(path, dead)
    assert await reloader.reload("test")
    checks = added.status.total_checks
    await asyncio.sleep(0.5)  # five probe intervals
    assert added.status.total_checks == checks, "its loop has stopped"
    state = await status_json(http, gateway)
    assert [d["name"] for d in state["dependencies"]] == ["docker-runner"]
    samples = parse(exposition(gateway.node.metrics))
    assert ("gateproxy_dependency_up", frozenset({("dependency", "other-runner")})) not in (
        samples), "no up series for it any more"
    async with http.get(url(gateway, "/api/other")) as resp:
        assert resp.status == 200
    assert rec.seen == [("GET", "/api/other")]


async def test_settings_that_need_a_restart_are_logged_and_kept(
        captured_logs: io.StringIO, tmp_path: Path, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "gp.yaml"
    write(path, dead)
    env = {k: v for k, v in env_for(upstream, dead).items() if k != "PLATFORM_SERVER_URL"}
    path.write_text(path.read_text() + f"upstream: {{url: '{upstream.url}'}}\n")
    gateway = await make_gateway(env, str(path))
    port = gateway.port
    write(path, dead, ("/api/containers", "/api/threads"),
          top=f"upstream: {{url: 'http://127.0.0.1:{free_port()}', health_timeout_ms: 900}}\n"
              f"admin_prefix: /_other")
    assert await Reloader(gateway.node, env).reload("test")
    assert gateway.node.config.upstream.url == upstream.url
    assert gateway.node.config.upstream.health_timeout_ms == 900, "applied: read per request"
    assert gateway.node.config.admin_prefix == settings.defaults()["admin_prefix"]
    [restart] = [line for line in log_lines(captured_logs)
                 if line["event"] == "config_restart_required"]
    assert restart["level"] == "WARNING"
    assert restart["keys"] == ["upstream.url", "admin_prefix"]
    state = await status_json(http, gateway)
    assert state["config"]["pendingRestart"] == ["upstream.url", "admin_prefix"]
    assert gateway.port == port
    async with http.get(url(gateway, "/api/threads")) as resp:
        assert resp.status == 503, "the routes in the same file were applied"


class SigningRunner:
    """A docker-runner stand-in that says which of `secrets` signed each probe (None:
    none of them) and, as the runner does, refuses a probe none of them signed."""

    def __init__(self, *secrets: str) -> None:
        self.secrets = secrets
        self.signed_with: list[str | None] = []
        self.app = web.Application()
        self.app.router.add_get("/v1/ready", self._ready)

    async def _ready(self, request: web.Request) -> web.Response:
        headers = request.headers
        signer = None
        if all(name in headers for name in HEADERS):
            signer = next((secret for secret in self.secrets if sign(
                secret, request.method, request.raw_path, int(headers["x-dr-timestamp"]),
                headers["x-dr-nonce"])["x-dr-signature"] == headers["x-dr-signature"]), None)
        self.signed_with.append(signer)
        if signer is None:
            return web.json_response({"error": {"code": "invalid_signature"}}, status=401)
        return web.json_response({"status": "ready"})

    async def next_probes(self, count: int) -> list[str | None]:
        """Who signed the next `count` probes."""
        start = len(self.signed_with)
        await wait_for(lambda: len(self.signed_with) >= start + count)
        return self.signed_with[start:start + count]


RUNNING_SECRET, NEW_SECRET = "running-secret-4f1d", "new-secret-9a7c"
SECRET_KEY = "dependencies[docker-runner].shared_secret"


async def test_a_changed_shared_secret_waits_for_a_restart(
        captured_logs: io.StringIO, tmp_path: Path, start_standin: StartStandIn,
        recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    runner = SigningRunner(RUNNING_SECRET, NEW_SECRET)
    runner_url = (await start_standin(runner.app)).url
    path = tmp_path / "gp.yaml"
    write(path, runner_url)
    env = env_for(upstream, runner_url, DOCKER_RUNNER_SHARED_SECRET=RUNNING_SECRET,
                  GATEPROXY_ADMIN_TOKEN="running-token-51b2")
    gateway = await make_gateway(env, str(path))
    assert await runner.next_probes(2) == [RUNNING_SECRET] * 2
    # The secrets change, and so does the docker-runner entry (a live change).
    env |= {"DOCKER_RUNNER_SHARED_SECRET": NEW_SECRET,
            "GATEPROXY_ADMIN_TOKEN": "new-token-c3e8"}
    write(path, runner_url, ("/api/containers", "/api/threads"))
    assert await Reloader(gateway.node, env).reload("test")
    async with http.get(url(gateway, "/api/threads")) as resp:
        assert resp.status == 200, "the docker-runner entry's routes were applied"
    assert gateway.node.config.dependencies[0].gated_routes[-1].prefix == "/api/threads"
    # The probe still signs with the running secret, the runner's until a restart.
    assert await runner.next_probes(3) == [RUNNING_SECRET] * 3
    assert gateway.node.guards[0].status.is_up
    assert gateway.node.runtime.version.pending_restart == ("admin_token", SECRET_KEY)
    state = await status_json(http, gateway)
    assert state["config"]["pendingRestart"] == ["admin_token", SECRET_KEY]
    [restart] = [line for line in log_lines(captured_logs)
                 if line["event"] == "config_restart_required"]
    assert restart["level"] == "WARNING"
    assert restart["keys"] == ["admin_token", SECRET_KEY]
    written = captured_logs.getvalue() + str(state)
    for secret in (RUNNING_SECRET, NEW_SECRET, "running-token-51b2", "new-token-c3e8"):
        assert secret not in written


async def test_a_new_dependency_takes_its_new_shared_secret(
        captured_logs: io.StringIO, tmp_path: Path, start_standin: StartStandIn,
        recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway) -> None:
    _, upstream = recorder
    runner = SigningRunner(RUNNING_SECRET, NEW_SECRET)
    runner_url = (await start_standin(runner.app)).url
    path = tmp_path / "gp.yaml"
    path.write_text("dependencies: []\n")
    env = env_for(upstream, runner_url, DOCKER_RUNNER_SHARED_SECRET=RUNNING_SECRET)
    gateway = await make_gateway(env, str(path))
    env["DOCKER_RUNNER_SHARED_SECRET"] = NEW_SECRET
    write(path, runner_url)
    assert await Reloader(gateway.node, env).reload("test")
    # Nothing ran with a secret for docker-runner: it starts with the new one.
    assert await runner.next_probes(2) == [NEW_SECRET] * 2
    assert gateway.node.runtime.version.pending_restart == ()
    assert not any(line["event"] == "config_restart_required"
                   for line in log_lines(captured_logs))


async def test_a_reload_restarts_exhausted_probing(
        recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway) -> None:
    _, upstream = recorder
    env = env_for(upstream, f"http://127.0.0.1:{free_port()}",
                  DOCKER_RUNNER_CONNECT_MAX_RETRIES="2")
    gateway = await make_gateway(env)
    status = gateway.node.guards[0].status
    await wait_for(lambda: status.retries_exhausted)
    assert await Reloader(gateway.node, env).reload("test")
    await wait_for(lambda: status.total_checks >= 3)
    assert gateway.node.runtime.version.number == 1, "same configuration, same version"


async def test_sighup_reloads(recorder: tuple[Recorder, StandIn],
                              make_gateway: MakeGateway) -> None:
    _, upstream = recorder
    env = env_for(upstream, f"http://127.0.0.1:{free_port()}")
    gateway = await make_gateway(env)
    async with Reloader(gateway.node, env).running():
        env["DOCKER_RUNNER_CONNECT_PROBE_INTERVAL_MS"] = "4321"
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: gateway.node.runtime.version.number == 2)
    assert gateway.node.guards[0].status.dep.probe_interval_ms == 4321


async def test_log_level_is_reloaded(tmp_path: Path, recorder: tuple[Recorder, StandIn],
                                     make_gateway: MakeGateway,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, upstream = recorder
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "gp.yaml"
    write(path, dead)
    env = env_for(upstream, dead)
    gateway = await make_gateway(env, str(path))
    write(path, dead, top="log: {level: ERROR}")
    try:
        assert await Reloader(gateway.node, env).reload("test")
        logs.log.warning("a_warning_after_the_reload")
        logs.log.error("an_error_after_the_reload")
        err = capsys.readouterr().err
    finally:
        logs.configure("json", "DEBUG", sys.__stderr__)
    assert "an_error_after_the_reload" in err
    assert "a_warning_after_the_reload" not in err


async def test_serve_reloads_on_file_change_and_on_sighup(
        tmp_path: Path, recorder: tuple[Recorder, StandIn], procs: list[Proc],
        http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    path = tmp_path / "gp.yaml"
    top = (f"listen: {{host: 127.0.0.1, port: {port}}}\nupstream: {{url: '{upstream.url}'}}\n"
           "shutdown_delay_ms: 0")
    write(path, dead, top=top)
    relative = os.path.relpath(path)  # noqa: ASYNC240 - getcwd only, no disk I/O
    proc = Proc("serve", "--config", relative)  # a relative path must work too
    procs.append(proc)
    await wait_live(port)
    base = f"http://127.0.0.1:{port}"
    async with http.get(f"{base}/api/threads") as resp:
        assert resp.status == 200
    write(path, dead, ("/api/containers", "/api/threads"), top=top)
    deadline = time.monotonic() + 10
    while True:
        async with http.get(f"{base}/api/threads") as resp:
            if resp.status == 503:
                break
        assert time.monotonic() < deadline, "the file change was not applied"
        await asyncio.sleep(0.1)
    proc.popen.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    async with http.get(f"{base}/_gateproxy/status.json") as resp:
        live = (await resp.json())["config"]
    assert live["version"] == 2 and live["pendingRestart"] == []
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(10) == 0
    lines = proc.lines()
    triggers = [line["trigger"] for line in lines if line["event"] == "config_reload"]
    assert triggers[-1] == "SIGHUP" and set(triggers[:-1]) == {"file_changed"}, triggers
    assert {line["version"] for line in lines if line["event"] == "config_reloaded"} == {2}


async def test_the_access_log_is_switched_on_for_new_connections(
        captured_logs: io.StringIO, tmp_path: Path, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway) -> None:
    _, upstream = recorder
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "gp.yaml"
    write(path, dead)
    env = env_for(upstream, dead)
    gateway = await make_gateway(env, str(path))

    async def one_request() -> None:
        async with aiohttp.ClientSession() as fresh, \
                fresh.get(url(gateway, "/api/threads")) as resp:
            assert resp.status == 200

    await one_request()
    write(path, dead, top="log: {access: true}")
    assert await Reloader(gateway.node, env).reload("test")
    await one_request()
    await wait_for(lambda: any(line["event"] == "access" for line in log_lines(captured_logs)))
    [access] = [line for line in log_lines(captured_logs) if line["event"] == "access"]
    assert (access["path"], access["outcome"]) == ("/api/threads", "forwarded")
