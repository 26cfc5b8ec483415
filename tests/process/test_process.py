"""The real `gateproxy` process: exit codes, signals, logs on stderr."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from gateproxy.demo.standins import StandIn
from tests.support.ports import free_port
from tests.support.processes import Proc, wait_live
from tests.support.standins import Recorder

SECRET = "process-test-secret-0123456789"


def config_file(tmp_path: Path, upstream: str, runner: str, port: int, **extra: object) -> str:
    lines = [
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        f"upstream: {{url: '{upstream}'}}",
        f"shutdown_delay_ms: {extra.pop('delay', 600)}",
        f"shutdown_grace_ms: {extra.pop('grace', 3000)}",
        "dependencies:",
        "  - name: docker-runner",
        f"    base_url: '{runner}'",
        f"    optional: {str(extra.pop('optional', True)).lower()}",
        "    retry: {base_delay_ms: 50, max_delay_ms: 100, jitter_ms: 0}",
        "    gated_routes: [/api/containers]",
    ]
    assert not extra
    path = tmp_path / "gp.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def test_sigterm_drains_then_exits_0(tmp_path: Path, recorder: tuple[Recorder, StandIn],
                                           procs: list[Proc]) -> None:
    _, upstream = recorder
    port = free_port()
    proc = Proc("serve", "--config", config_file(tmp_path, upstream.url,
                                                 f"http://127.0.0.1:{free_port()}", port,
                                                 delay=800))
    procs.append(proc)
    await wait_live(port)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/_gateproxy/ready") as resp:
            assert resp.status == 200
        # An SSE stream in flight must finish within the grace time.
        stream = await http.get(f"http://127.0.0.1:{port}/api/events/sse?count=5&interval=0.2")
        proc.popen.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with http.get(f"http://127.0.0.1:{port}/_gateproxy/ready") as resp:
            assert resp.status == 503, "ready turns 503 at once"
        async with http.get(f"http://127.0.0.1:{port}/api/threads") as resp:
            assert resp.status == 200, "everything else is still served during the delay"
        body = await stream.read()
        assert body.count(b"event: tick") == 5, "the in-flight stream was not cut"
        stream.release()
    assert await asyncio.to_thread(proc.popen.wait, 10) == 0
    events = [line["event"] for line in proc.lines()]
    assert events.index("shutdown_requested") < events.index("closing_listeners") < \
        events.index("stopped")


async def test_required_dependency_down_at_start_exits_1(tmp_path: Path,
                                                         procs: list[Proc]) -> None:
    port = free_port()
    proc = Proc("serve", "--config", config_file(tmp_path, "http://127.0.0.1:1",
                                                 f"http://127.0.0.1:{free_port()}", port,
                                                 optional=False))
    procs.append(proc)
    assert await asyncio.to_thread(proc.popen.wait, 15) == 1
    lines = proc.lines()
    failed = [line for line in lines if line["event"] == "startup_failed"]
    assert failed and "docker-runner" in str(failed[0]["message"])
    assert any(line["event"] == "probe_failed" for line in lines)
    assert not any(line["event"] == "listening" for line in lines)


async def test_logs_are_json_lines_on_stderr_without_the_secret(
        tmp_path: Path, recorder: tuple[Recorder, StandIn], procs: list[Proc]) -> None:
    _, upstream = recorder
    port = free_port()
    runner_port = free_port()
    proc = Proc("serve", "--config", config_file(tmp_path, upstream.url,
                                                 f"http://127.0.0.1:{runner_port}", port,
                                                 delay=0),
                env={"DOCKER_RUNNER_SHARED_SECRET": SECRET})
    procs.append(proc)
    await wait_live(port)
    await asyncio.sleep(0.5)
    proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.popen.wait, 10) == 0
    assert proc.popen.stderr is not None
    lines = proc.lines()
    assert lines, "no log lines"
    for line in lines:
        assert {"time", "level", "event"} <= set(line)
        assert SECRET not in orjson.dumps(line).decode()
    failures = [line for line in lines if line["event"] == "probe_failed"]
    assert len(failures) >= 3
    assert failures[0]["errorCode"] == "connection_refused"
    assert failures[0]["baseUrl"] == f"http://127.0.0.1:{runner_port}"


async def test_port_in_use_exits_1_with_a_clear_line(tmp_path: Path, procs: list[Proc]) -> None:
    taken = StandIn(web.Application())
    await taken.start()
    try:
        proc = Proc("serve", "--config", config_file(tmp_path, "http://127.0.0.1:1",
                                                     "http://127.0.0.1:1", taken.port))
        procs.append(proc)
        assert await asyncio.to_thread(proc.popen.wait, 15) == 1
        failed = [line for line in proc.lines() if line["event"] == "startup_failed"]
        assert f"cannot listen on 127.0.0.1:{taken.port}" in str(failed[0]["message"])
    finally:
        await taken.stop()


