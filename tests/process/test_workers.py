"""Several workers behind one port (`workers: 2`), as real processes: one supervisor that
probes, two `gateproxy worker` processes sharing the port, one truth for every view.

The stand-ins run in this test process; the supervisor and its workers are a real
`gateproxy serve`. Which worker served a request is read from its access log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from gateproxy.demo.standins import StandIn, docker_runner, platform_server
from tests.support.own_answers import MARKER, check_own_answer
from tests.support.ports import free_port
from tests.support.processes import LoggedProcess
from tests.support.rawclient import exchange

ROOT = Path(__file__).resolve().parents[2]
AGREEMENT_S = 0.05  # every worker applies a state change within this of the first
RECORDER = ROOT / "tests" / "support" / "module_recorder"
# What a worker never uses: aiohttp's server (it serves the proxy's port on the HTTP
# core), the exposition (it sends numbers), the status page's templates, the file
# watcher, the gRPC probe, the supervisor's own modules.
NOT_IN_A_WORKER = frozenset({
    "aiohttp.web", "aiohttp.web_protocol", "prometheus_client", "jinja2", "watchfiles",
    "grpclib",
    "gateproxy.views.exposition", "gateproxy.views.admin", "gateproxy.serve.admin_port",
    "gateproxy.workers.supervisor", "gateproxy.workers.aggregate"})


Proxy = LoggedProcess


def write_config(path: Path, port: int, upstream: str, runner: str, *,
                 routes: str = "[/api/containers]", admin_port: int | None = None) -> None:
    path.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        + (f"admin_port: {admin_port}\n" if admin_port else "") +
        "workers: 2\n"
        f"upstream: {{url: '{upstream}'}}\n"
        "log: {level: DEBUG, access: true}\n"
        "shutdown_delay_ms: 1000\nshutdown_grace_ms: 5000\n"
        "dependencies:\n  - name: docker-runner\n"
        f"    base_url: '{runner}'\n"
        "    probe_interval_ms: 200\n    probe_timeout_ms: 500\n"
        "    retry: {base_delay_ms: 50, max_delay_ms: 200, jitter_ms: 0}\n"
        f"    gated_routes: {routes}\n")


@pytest.fixture
async def runner() -> AsyncIterator[StandIn]:
    standin = StandIn(docker_runner(), port=free_port())
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
async def upstream(runner: StandIn) -> AsyncIterator[StandIn]:
    standin = StandIn(platform_server(runner))
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
def admin_port() -> int | None:
    """None: the admin endpoints on the proxy's port (a test parametrizes it to differ)."""
    return None


@pytest.fixture
def record_modules() -> bool:
    """Whether every gateproxy process writes the modules it loaded to tmp_path at its
    exit (tests/support/module_recorder); a test parametrizes it."""
    return False


@pytest.fixture
async def proxy(tmp_path: Path, upstream: StandIn, runner: StandIn,
                admin_port: int | None, record_modules: bool) -> AsyncIterator[Proxy]:
    cfg = tmp_path / "gateproxy.yaml"
    write_config(cfg, free_port(), upstream.url, runner.url, admin_port=admin_port)
    env = {**os.environ, "GATEPROXY_LOG_FORMAT": "json"}
    if record_modules:
        env["RECORD_MODULES"] = str(tmp_path)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(RECORDER), os.environ.get("PYTHONPATH")) if p)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateproxy", "serve", "--config", str(cfg), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env)
    started = Proxy(process, 0)
    started.reader = asyncio.get_running_loop().create_task(started.read())
    try:
        supervising = (await started.wait_for("supervising"))[0]
        started.port = int(supervising["port"])
        await started.wait_for("listening", count=2)
        await started.wait_for("status_followed", count=2, status="up")
        yield started
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await started.reader


async def fresh_get(url: str) -> tuple[int, bytes]:
    """One request on a new connection (so that the kernel may pick either worker)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s, s.get(url) as resp:
        return resp.status, await resp.read()


async def _children(pid: int) -> list[int]:
    found = await asyncio.create_subprocess_exec("pgrep", "-P", str(pid),
                                                 stdout=asyncio.subprocess.PIPE)
    out, _ = await found.communicate()
    return [int(p) for p in out.split()]


def _at(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00")).timestamp()


async def test_two_workers_share_the_port_and_follow_one_probe(
        proxy: Proxy, runner: StandIn) -> None:
    statuses = [await fresh_get(proxy.url("/api/threads")) for _ in range(40)]
    assert {status for status, _ in statuses} == {200}
    await asyncio.sleep(0.3)  # the access lines of the last requests
    served_by = {ln["worker"] for ln in proxy.events("access")}
    assert served_by == {0, 1}, "the kernel spreads new connections over both workers"
    # Only the supervisor probes: no worker ever logs a probe.
    assert not [ln for ln in proxy.lines if ln["event"].startswith("probe_")
                and "worker" in ln]

    # A flip: every worker follows within AGREEMENT_S of the first, and answers so.
    await runner.stop()
    down = await proxy.wait_for("status_followed", count=2, status="down")
    at = sorted(_at(line) for line in down[:2])
    assert {line["worker"] for line in down[:2]} == {0, 1}
    assert at[1] - at[0] < AGREEMENT_S, f"workers disagreed for {at[1] - at[0]:.3f} s"
    await asyncio.sleep(AGREEMENT_S)
    gated = [await fresh_get(proxy.url("/api/containers")) for _ in range(20)]
    assert {status for status, _ in gated} == {503}
    assert b"docker_runner_not_ready" in gated[0][1]

    await runner.start()
    up = await proxy.wait_for("status_followed", count=4, status="up")  # twice each
    at = sorted(_at(line) for line in up[-2:])
    assert at[1] - at[0] < AGREEMENT_S
    await asyncio.sleep(AGREEMENT_S)
    assert {(await fresh_get(proxy.url("/api/containers")))[0] for _ in range(20)} == {200}


@pytest.mark.parametrize("admin_port", [free_port()])
async def test_maintenance_on_the_supervisor_closes_the_routes_in_every_worker(
        proxy: Proxy, admin_port: int) -> None:
    url = f"http://127.0.0.1:{admin_port}/_gateproxy/dependencies/docker-runner/maintenance"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"reason": "runner upgrade"}) as resp:
            assert resp.status == 200 and (await resp.json())["maintenance"]["reason"] \
                == "runner upgrade"
        started = await proxy.wait_for("status_followed", count=4)  # 2 up, then these
        assert {ln["worker"] for ln in started[2:]} == {0, 1}
        await asyncio.sleep(AGREEMENT_S)
        gated = {(await fresh_get(proxy.url("/api/containers")))[0] for _ in range(20)}
        assert gated == {503}, "maintenance reached every worker"
        async with session.delete(url) as resp:
            assert resp.status == 200 and (await resp.json())["maintenance"] is None
        await proxy.wait_for("status_followed", count=6)
        await asyncio.sleep(AGREEMENT_S)
        assert {(await fresh_get(proxy.url("/api/containers")))[0] for _ in range(20)} \
            == {200}


async def test_the_admin_endpoints_show_one_truth_whichever_worker_answers(
        proxy: Proxy, runner: StandIn) -> None:
    await runner.stop()
    await proxy.wait_for("status_followed", count=2, status="down")
    for _ in range(30):
        assert (await fresh_get(proxy.url("/api/containers/x")))[0] == 503
    for _ in range(10):
        assert (await fresh_get(proxy.url("/api/threads")))[0] == 200
    await asyncio.sleep(1.5)  # the workers report their counts every second
    for _ in range(4):  # whichever worker takes the scrape, the supervisor answers
        status, text = await fresh_get(proxy.url("/_gateproxy/metrics"))
        assert status == 200
        metrics = text.decode()
        assert ('gateproxy_gated_requests_total{dependency="docker-runner",'
                'route="/api/containers"} 30.0') in metrics
        assert 'gateproxy_forwarded_requests_total{method="GET",status_class="2xx"} 10.0' \
            in metrics
        assert 'gateproxy_dependency_up{dependency="docker-runner"} 0.0' in metrics
        status, body = await fresh_get(proxy.url("/_gateproxy/status.json"))
        state = orjson.loads(body)
        dep = state["dependencies"][0]
        assert dep["status"] == "down" and dep["gatedRequests"]["last5m"] == 30
        assert state["forwardedRequests"]["last5m"] >= 10  # and the admin requests since


async def test_a_workers_own_answers_are_written_as_a_single_proxys(proxy: Proxy) -> None:
    """The admin endpoints a worker relays from its supervisor, /health and the proxy's
    errors: an HTTP/1.1 status line and one `Server: gateproxy`, over HTTP/1.0 too."""
    cases = [("/_gateproxy/live", 200, None), ("/_gateproxy/ready", 200, None),
             ("/_gateproxy/status", 200, None), ("/_gateproxy/status.json", 200, None),
             ("/_gateproxy/metrics", 200, None), ("/health", 200, None),
             (f"/_gateproxy/x?{MARKER}", 404, "not_found"), ("/../x", 400, "bad_request")]
    for path, status, code in cases:
        for version in ("1.0", "1.1"):
            for _ in range(2):  # on new connections: either worker may answer
                request = (f"GET {path} HTTP/{version}\r\nHost: p.test\r\n"
                           f"X-Marker: {MARKER}\r\nConnection: close\r\n\r\n")
                got = await exchange(proxy.port, request.encode())
                check_own_answer(got, status, code)


async def test_a_worker_that_dies_is_restarted_and_the_other_keeps_serving(
        proxy: Proxy) -> None:
    worker = (await proxy.wait_for("listening", count=2))[0]
    pids = {ln["worker"]: ln for ln in proxy.events("listening")}
    assert set(pids) == {0, 1}
    children = await _children(proxy.process.pid)
    assert len(children) == 2
    os.kill(children[0], signal.SIGKILL)
    statuses = [(await fresh_get(proxy.url("/api/threads")))[0] for _ in range(30)]
    assert set(statuses) == {200}, "the surviving worker serves every new connection"
    exited = await proxy.wait_for("worker_exited")
    assert exited[0]["level"] == "ERROR" and exited[0]["exitCode"] == -9
    await proxy.wait_for("listening", count=3, timeout=20)
    after = await _children(proxy.process.pid)
    assert len(after) == 2 and children[0] not in after
    assert worker["event"] == "listening"


async def test_a_reload_reaches_every_worker(proxy: Proxy, tmp_path: Path,
                                           upstream: StandIn, runner: StandIn) -> None:
    assert (await fresh_get(proxy.url("/api/threads")))[0] == 200
    write_config(tmp_path / "gateproxy.yaml", proxy.port, upstream.url, runner.url,
                 routes="[/api/containers, /api/threads]")
    await runner.stop()
    proxy.process.send_signal(signal.SIGHUP)
    reloaded = await proxy.wait_for("config_reloaded", count=3)
    assert {ln.get("worker") for ln in reloaded} == {None, 0, 1}
    await proxy.wait_for("status_followed", count=2, status="down")
    await asyncio.sleep(0.1)
    assert {(await fresh_get(proxy.url("/api/threads")))[0] for _ in range(20)} == {503}


async def test_websockets_are_relayed_by_any_worker(proxy: Proxy) -> None:
    for _ in range(4):
        async with websockets.connect(f"ws://127.0.0.1:{proxy.port}/api/echo/ws",
                                      subprotocols=[websockets.Subprotocol("echo")]) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"


async def test_sigterm_drains_every_worker_and_exits_0(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        slow = asyncio.get_running_loop().create_task(
            fresh_get(proxy.url("/api/threads")))
        proxy.process.send_signal(signal.SIGTERM)
        await proxy.wait_for("shutdown_requested")
        async with session.get(proxy.url("/_gateproxy/ready")) as resp:
            assert resp.status == 503, "ready turns 503 at once"
        async with session.get(proxy.url("/api/threads")) as resp:
            assert resp.status == 200, "everything else is served during the delay"
        assert (await slow)[0] == 200
    assert await asyncio.wait_for(proxy.process.wait(), 15) == 0
    assert len(proxy.events("stopped")) == 3  # two workers and the supervisor


@pytest.mark.parametrize("record_modules", [True])
async def test_a_worker_carries_only_what_it_uses(proxy: Proxy, tmp_path: Path) -> None:
    """A worker sends its metrics as numbers and relays the admin endpoints: it never
    loads the exposition, the page templates, the file watcher or the gRPC probe. Each
    process lists the modules it loaded at its exit (tests/support/module_recorder)."""
    for path in ("/_gateproxy/metrics", "/_gateproxy/status", "/api/threads", "/health"):
        for _ in range(4):  # on new connections: both workers
            assert (await fresh_get(proxy.url(path)))[0] == 200
    await asyncio.sleep(1.5)  # a report of the counts from each worker
    workers = await _children(proxy.process.pid)
    proxy.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proxy.process.wait(), 15) == 0
    loaded = {pid: frozenset((tmp_path / f"{pid}.txt").read_text().split())
              for pid in (proxy.process.pid, *workers)}
    supervisor = loaded.pop(proxy.process.pid)
    # The record holds what was loaded late too: the supervisor wrote the metrics and
    # the page on the workers' behalf.
    assert {"prometheus_client", "jinja2", "gateproxy.views.exposition"} <= supervisor
    assert len(loaded) == 2
    for modules in loaded.values():
        assert "gateproxy.workers.control" in modules
        assert not modules & NOT_IN_A_WORKER, sorted(modules & NOT_IN_A_WORKER)
