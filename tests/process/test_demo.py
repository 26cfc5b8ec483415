"""`gateproxy demo` as a user runs it: it prints the URLs, the gate closes and opens with
docker-runner (flipped from the stand-in's demo page), and Ctrl-C stops it cleanly."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import aiohttp
import pytest


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
async def test_demo_prints_the_urls_and_the_gate_follows_the_flip(
        http: aiohttp.ClientSession, grpc: bool) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateproxy", "demo", "--port", "0", "--seconds", "60",
        *(["--grpc"] if grpc else []),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        banner = ""
        async with asyncio.timeout(20):
            while "WebSocket echo" not in banner:
                line = (await proc.stdout.readline()).decode()
                assert line, f"the demo ended early: {await proc.stderr.read()!r}"
                banner += line
        found = re.search(r"status page\s+(http://127\.0\.0\.1:\d+)/_gateproxy/status\n",
                          banner)
        assert found, banner
        base = found.group(1)
        for expected in (f"{base}/demo", f"curl -i {base}/api/containers",
                         f"curl -i {base}/api/threads", f"curl -s {base}/health",
                         f"{base}/_gateproxy/metrics", "gateproxy.yaml"):
            assert expected in banner, expected

        async with http.get(f"{base}/api/containers") as resp:
            assert resp.status == 503, "docker-runner starts down"
            assert (await resp.json())["error"]["code"] == "docker_runner_not_ready"
        async with http.get(f"{base}/api/threads") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/demo") as resp:
            page = await resp.text()
        assert "Start docker-runner" in page and "/_gateproxy/status" in page
        async with http.get(f"{base}/_gateproxy/status") as resp:
            status_page = await resp.text()
        assert resp.status == 200 and "docker-runner" in status_page
        assert "/demo/docker-runner" not in status_page, "no flip button on the status page"

        async with http.post(f"{base}/demo/docker-runner", allow_redirects=False) as resp:
            assert resp.status == 303
        for _ in range(50):  # a gated request triggers a recheck: well within 5 s
            async with http.get(f"{base}/api/containers") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 200, "the gate opened after the flip"
        async with http.get(f"{base}/_gateproxy/status.json") as resp:
            [dep] = (await resp.json())["dependencies"]
        assert dep["status"] == "up"
        assert dep["probe"] == ("grpc" if grpc else "http")
        assert dep["baseUrl"].startswith("grpc://" if grpc else "http://")
        assert [(t["from"], t["to"]) for t in dep["transitions"]][:2] == [
            ("down", "up"), ("unknown", "down")]

        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
        log = (await proc.stderr.read()).decode()
        assert "demo_stopped" in log
        assert "Traceback" not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
