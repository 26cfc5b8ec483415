"""Shared fixtures: real stand-in servers and real gateways on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import settings

from gateproxy import config, logs
from gateproxy.demo.standins import StandIn, docker_runner, platform_server
from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app

# In CI the property tests run a fixed sequence of examples, so that a landing does not
# depend on luck; on a developer's machine they explore anew on every run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


# `GATEPROXY_FAST_PATH=false make test-public` (part of `make test`) runs the proxy's
# behaviour tests again on aiohttp's public APIs only. Real processes inherit the variable;
# the gateways a test builds in-process get it here, over the environment it passes.
FAST_PATH = os.environ.get("GATEPROXY_FAST_PATH")


@pytest.fixture(autouse=True)
def _fast_path_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    if FAST_PATH is None:
        return
    load = config.load

    def load_with_setting(path: str | None = None,
                          env: dict[str, str] | None = None) -> config.Config:
        return load(path, None if env is None else {**env, "GATEPROXY_FAST_PATH": FAST_PATH})

    monkeypatch.setattr(config, "load", load_with_setting)


@pytest.fixture
def captured_logs() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("json", "DEBUG", stream)
    return stream


def log_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on (bound and released), for 'connection refused' or for a
    server to start on later. Never the same one twice in a test run: two calls in a row
    may otherwise get the same port back, and two servers would then want it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Recorder:
    """A platform-server stand-in that records every request it receives."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.app = platform_server()
        self.app.middlewares.append(self._record)

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path))
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except web.HTTPNotFound:
            return web.json_response({"echo": request.raw_path}, status=200)


StartStandIn = Callable[[web.Application], Awaitable[StandIn]]


@pytest.fixture
async def start_standin() -> AsyncIterator[StartStandIn]:
    started: list[StandIn] = []

    async def start(app: web.Application, port: int = 0) -> StandIn:
        standin = StandIn(app, port=port)
        await standin.start()
        started.append(standin)
        return standin

    yield start
    for standin in started:
        await standin.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[StandIn]:
    """The rich stand-in upstream of the transparency tests (tests/support/upstream_app.py);
    modules that need another upstream define their own fixture of this name."""
    standin = StandIn(upstream_app.app())
    await standin.start()
    upstream_app.WS_ENDINGS.clear()
    yield standin
    await standin.stop()


@pytest.fixture
async def runner(start_standin: StartStandIn) -> StandIn:
    return await start_standin(docker_runner())


@pytest.fixture
async def recorder(start_standin: StartStandIn) -> tuple[Recorder, StandIn]:
    rec = Recorder()
    return rec, await start_standin(rec.app)


def env_for(upstream: StandIn, runner_url: str, **extra: str) -> dict[str, str]:
    env = {
        "GATEPROXY_HOST": "127.0.0.1",
        "GATEPROXY_PORT": "0",
        "PLATFORM_SERVER_URL": upstream.url,
        "DOCKER_RUNNER_BASE_URL": runner_url,
        "DOCKER_RUNNER_CONNECT_RETRY_BASE_DELAY_MS": "50",
        "DOCKER_RUNNER_CONNECT_RETRY_MAX_DELAY_MS": "200",
        "DOCKER_RUNNER_CONNECT_RETRY_JITTER_MS": "0",
        "DOCKER_RUNNER_CONNECT_PROBE_INTERVAL_MS": "200",
        "DOCKER_RUNNER_CONNECT_PROBE_TIMEOUT_MS": "500",
    }
    env.update(extra)
    return env


MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway() -> AsyncIterator[MakeGateway]:
    """Start a real Gateway (port 0) from a config file and/or environment."""
    gateways: list[Gateway] = []

    async def make(env: dict[str, str], path: str | None = None) -> Gateway:
        gateway = Gateway(config.load(path, env))
        gateways.append(gateway)
        await gateway.start()
        return gateway

    yield make
    for gateway in gateways:
        await gateway.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A bounded total: a hung request fails fast and names its test.
    async with aiohttp.ClientSession(auto_decompress=False,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def url(gateway: Gateway, path: str = "/") -> str:
    return f"http://127.0.0.1:{gateway.port}{path}"
