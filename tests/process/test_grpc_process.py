"""A real `gateproxy serve` probing a real gRPC docker-runner (grpcio's server): the HTTP
probe's process-level scenarios, with probe: grpc."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateproxy.demo.standins import StandIn
from tests.support.grpc_servers import ReferenceRunner
from tests.support.ports import free_port
from tests.support.processes import Proc, wait_live
from tests.support.standins import Recorder

SECRET = "grpc-process-secret-0123456789"


def grpc_config(tmp_path: Path, upstream: str, port: int, runner: str | None) -> str:
    lines = [
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        f"upstream: {{url: '{upstream}'}}",
        "shutdown_delay_ms: 0",
        "dependencies:",
        "  - name: docker-runner",
        *([f"    probe: grpc\n    base_url: '{runner}'"] if runner else []),
        "    probe_interval_ms: 200",
        "    probe_timeout_ms: 500",
        "    retry: {base_delay_ms: 50, max_delay_ms: 100, jitter_ms: 0}",
        "    gated_routes: [/api/containers]",
    ]
    path = tmp_path / "gp.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
async def reference() -> AsyncIterator[ReferenceRunner]:
    runner = ReferenceRunner(SECRET)
    await runner.start()
    yield runner
    await runner.stop()


async def wait_status(http: aiohttp.ClientSession, url: str, status: int,
                      timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            async with http.get(url) as resp:
                if resp.status == status:
                    return
            await asyncio.sleep(0.05)


async def test_start_down_gate_recover_and_fall_again_without_restart(
        tmp_path: Path, recorder: tuple[Recorder, StandIn], reference: ReferenceRunner,
        procs: list[Proc]) -> None:
    _, upstream = recorder
    await reference.stop()  # down at start: connection refused on its port
    port = free_port()
    proc = Proc("serve", "--config", grpc_config(tmp_path, upstream.url, port, reference.url),
                env={"DOCKER_RUNNER_SHARED_SECRET": SECRET})
    procs.append(proc)
    await wait_live(port)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{base}/api/containers") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "docker_runner_not_ready"
            assert int(resp.headers["Retry-After"]) >= 1
        async with http.get(f"{base}/api/threads") as resp:
            assert resp.status == 200, "ungated routes are forwarded while it is down"
        async with http.get(f"{base}/health") as resp:
            snap = (await resp.json())["dependencies"]["dockerRunner"]
        assert (snap["status"], snap["probe"], snap["endpoint"], snap["baseUrl"]) == (
            "down", "grpc", reference.url, reference.url)
        assert snap["lastError"]["code"] == "connection_refused"

        await reference.start()
        await wait_status(http, f"{base}/api/containers", 200)
        async with http.get(f"{base}/health") as resp:
            snap = (await resp.json())["dependencies"]["dockerRunner"]
        assert snap["status"] == "up" and snap["lastError"] is None
        assert reference.peers and reference.rejected == [], "signed as the runner expects"
        async with http.get(f"{base}/_gateproxy/metrics") as resp:
            metrics = await resp.text()
        assert (f'gateproxy_dependency_info{{dependency="docker-runner",endpoint='
                f'"{reference.url}",probe="grpc"}} 1.0') in metrics

        await reference.stop()
        await wait_status(http, f"{base}/api/containers", 503)
    proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.popen.wait, 10) == 0
    lines = proc.lines()
    failures = [line for line in lines if line["event"] == "probe_failed"]
    assert failures[0]["errorCode"] == "connection_refused"
    for line in failures:
        assert line["probe"] == "grpc" and line["baseUrl"] == reference.url
        assert isinstance(line["retryInMs"], int) and line["nextRetryAt"]
        assert isinstance(line["consecutiveFailures"], int)
    # One ERROR line per down phase at least (rechecks driven by traffic log at DEBUG).
    assert len(failures) >= 2 and failures[0]["consecutiveFailures"] == 1
    recovered = [line for line in lines if line["event"] == "dependency_recovered"]
    assert recovered and recovered[0]["probe"] == "grpc"
    assert SECRET not in proc.popen.args and all(SECRET not in str(line) for line in lines)


async def test_a_wrong_secret_is_grpc_unauthenticated_with_a_hint(
        tmp_path: Path, recorder: tuple[Recorder, StandIn], reference: ReferenceRunner,
        procs: list[Proc]) -> None:
    _, upstream = recorder
    port = free_port()
    # From the platform's variables alone: no base_url in the file.
    proc = Proc("serve", "--config", grpc_config(tmp_path, upstream.url, port, None),
                env={"DOCKER_RUNNER_SHARED_SECRET": "not-the-runners",
                     "DOCKER_RUNNER_GRPC_HOST": "127.0.0.1",
                     "DOCKER_RUNNER_GRPC_PORT": str(reference.port)})
    procs.append(proc)
    await wait_live(port)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{base}/api/containers") as resp:
            assert resp.status == 503
        async with http.get(f"{base}/health") as resp:
            snap = (await resp.json())["dependencies"]["dockerRunner"]
    assert snap["lastError"] == {"code": "grpc_unauthenticated",
                                 "message": "invalid_signature"}
    assert set(reference.rejected) == {"invalid_signature"}
    proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.popen.wait, 10) == 0
    failed = [line for line in proc.lines() if line["event"] == "probe_failed"]
    assert failed[0]["errorCode"] == "grpc_unauthenticated"
    assert failed[0]["level"] == "ERROR"
    assert "DOCKER_RUNNER_SHARED_SECRET" in str(failed[0]["hint"])
