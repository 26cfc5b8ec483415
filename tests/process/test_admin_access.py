"""Who may change state on the admin port, judged from another host: a real `gateproxy
serve` and curl in a network namespace of this test's own (a veth pair with addresses
from 198.18.0.0/15, the range RFC 2544 keeps for tests). The proxy listens on 0.0.0.0
for the length of a test so that the same process is reached over the loopback and
over the veth pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateproxy.demo.standins import StandIn, docker_runner, platform_server
from tests.support.ports import free_port
from tests.support.processes import LoggedProcess

HOST_ADDRESS = "198.18.0.1"
PEER_ADDRESS = "198.18.0.2"
TOKEN = "admin-access-test-token"
MAINTENANCE = "/_gateproxy/dependencies/docker-runner/maintenance"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    """A network namespace whose one interface is the far end of a veth pair: a host
    at PEER_ADDRESS that reaches this one at HOST_ADDRESS."""
    name = f"gpadmin{os.getpid()}"
    outer, inner = f"gpa{os.getpid()}", f"gpb{os.getpid()}"
    if shutil.which("ip") is None or shutil.which("curl") is None:
        pytest.skip("needs iproute2 and curl")
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here (needs root): {exc.stderr!r}")
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("addr", "add", f"{HOST_ADDRESS}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", name, "addr", "add", f"{PEER_ADDRESS}/30", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        # Deleting the namespace deletes its end of the pair, and with it the other.
        _ip("netns", "delete", name)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "delete", outer)


@dataclass
class Proxy:
    """A `gateproxy serve` with its admin port, and its log lines."""

    logged: LoggedProcess
    admin_port: int
    proxy_port: int

    def events(self, event: str) -> list[dict[str, Any]]:
        return self.logged.events(event)

    @property
    def lines(self) -> list[dict[str, Any]]:
        return self.logged.lines

    async def wait_for(self, event: str) -> dict[str, Any]:
        return (await self.logged.wait_for(event))[-1]


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, token: str | None) -> AsyncIterator[Proxy]:
    runner = StandIn(docker_runner())
    await runner.start()
    upstream = StandIn(platform_server(runner))
    await upstream.start()
    admin_port, proxy_port = free_port(), free_port()
    cfg = tmp_path / "gateproxy.yaml"
    cfg.write_text(
        f"listen: {{host: 0.0.0.0, port: {proxy_port}}}\n"
        f"admin_port: {admin_port}\n"
        f"upstream: {{url: '{upstream.url}'}}\n"
        "shutdown_delay_ms: 0\n"
        "dependencies:\n  - name: docker-runner\n"
        f"    base_url: '{runner.url}'\n"
        "    gated_routes: [/api/containers]\n")
    env = {k: v for k, v in os.environ.items() if k != "GATEPROXY_ADMIN_TOKEN"}
    if token is not None:
        env["GATEPROXY_ADMIN_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateproxy", "serve", "--config", str(cfg),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**env, "GATEPROXY_LOG_FORMAT": "json"})
    logged = LoggedProcess(process)
    proxy = Proxy(logged, admin_port, proxy_port)
    reader = asyncio.get_running_loop().create_task(logged.read())
    try:
        await proxy.wait_for("listening")
        yield proxy
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
        await reader
        await upstream.stop()
        await runner.stop()


async def curl(method: str, url: str, *, netns: str | None = None,
               token: str | None = None) -> tuple[int, dict[str, Any]]:
    """One request with the real curl, from the namespace when `netns` is given; the
    status and the JSON body."""
    command = ["curl", "-sS", "--max-time", "5", "-X", method, "-o", "-",
               "-w", "\n%{http_code}", url]
    if token is not None:
        command[1:1] = ["-H", f"Authorization: Bearer {token}"]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    done = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await done.communicate()
    assert done.returncode == 0, err
    body, _, code = out.decode().rpartition("\n")
    return int(code), orjson.loads(body)


async def maintenance_of(proxy: Proxy) -> Any:
    _, status = await curl("GET", f"http://127.0.0.1:{proxy.admin_port}/_gateproxy/status.json")
    return status["dependencies"][0]["maintenance"]


async def test_without_a_token_only_the_loopback_changes_state(namespace: str,
                                                              tmp_path: Path) -> None:
    async with serving(tmp_path, token=None) as proxy:
        remote = f"http://{HOST_ADDRESS}:{proxy.admin_port}"
        code, body = await curl("POST", remote + MAINTENANCE, netns=namespace)
        assert code == 403, body
        assert body["error"]["code"] == "forbidden"
        assert "GATEPROXY_ADMIN_TOKEN" in body["error"]["message"]
        code, _ = await curl("DELETE", remote + MAINTENANCE, netns=namespace)
        assert code == 403
        # Nothing changed: no maintenance, the gated route still forwarded.
        assert await maintenance_of(proxy) is None
        code, _ = await curl("GET", f"http://{HOST_ADDRESS}:{proxy.proxy_port}/api/containers",
                             netns=namespace)
        assert code == 200
        denied = proxy.events("admin_denied")
        assert [(d["peer"], d["token"], d["code"]) for d in denied] == [
            (PEER_ADDRESS, False, "forbidden")] * 2
        assert not proxy.events("maintenance_started")
        # The read-only endpoints stay open to the other host.
        code, _ = await curl("GET", remote + "/_gateproxy/ready", netns=namespace)
        assert code == 200
        metrics = await _metrics(proxy)
        assert 'gateproxy_admin_denied_total{code="forbidden"} 2.0' in metrics

        # The pod's own containers (the loopback) may.
        local = f"http://127.0.0.1:{proxy.admin_port}"
        code, body = await curl("POST", local + MAINTENANCE)
        assert code == 200 and body["maintenance"] is not None, body
        started = await proxy.wait_for("maintenance_started")
        assert (started["peer"], started["token"]) == ("127.0.0.1", False)
        code, _ = await curl("GET", f"http://127.0.0.1:{proxy.proxy_port}/api/containers")
        assert code == 503
        code, body = await curl("DELETE", local + MAINTENANCE)
        assert code == 200 and body["maintenance"] is None
        ended = await proxy.wait_for("maintenance_ended")
        assert (ended["peer"], ended["token"]) == ("127.0.0.1", False)


async def test_with_a_token_every_caller_needs_it(namespace: str, tmp_path: Path) -> None:
    async with serving(tmp_path, token=TOKEN) as proxy:
        remote = f"http://{HOST_ADDRESS}:{proxy.admin_port}"
        local = f"http://127.0.0.1:{proxy.admin_port}"
        for url, netns in ((remote, namespace), (local, None)):
            code, body = await curl("POST", url + MAINTENANCE, netns=netns)
            assert (code, body["error"]["code"]) == (401, "unauthorized")
            code, body = await curl("POST", url + MAINTENANCE, netns=netns, token="wrong")
            assert (code, body["error"]["code"]) == (401, "unauthorized")
        assert await maintenance_of(proxy) is None
        assert [(d["peer"], d["token"]) for d in proxy.events("admin_denied")] == [
            (PEER_ADDRESS, False), (PEER_ADDRESS, False), ("127.0.0.1", False),
            ("127.0.0.1", False)]
        code, body = await curl("POST", remote + MAINTENANCE, netns=namespace, token=TOKEN)
        assert code == 200 and body["maintenance"] is not None
        started = await proxy.wait_for("maintenance_started")
        assert (started["peer"], started["token"]) == (PEER_ADDRESS, True)
        code, _ = await curl("DELETE", remote + MAINTENANCE, netns=namespace, token=TOKEN)
        assert code == 200
        assert await maintenance_of(proxy) is None
        assert TOKEN not in str(proxy.lines)
        assert 'gateproxy_admin_denied_total{code="unauthorized"} 4.0' in await _metrics(proxy)


async def _metrics(proxy: Proxy) -> str:
    command = ["curl", "-sS", "--max-time", "5",
               f"http://127.0.0.1:{proxy.admin_port}/_gateproxy/metrics"]
    done = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    out, _ = await done.communicate()
    return out.decode()
