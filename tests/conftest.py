"""Fixtures only: real stand-in servers, real gateways and processes on 127.0.0.1. Helpers
live in tests/support/; no test module imports this file."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web
from hypothesis import settings

from gateproxy import config, logs
from gateproxy.demo.standins import StandIn, docker_runner
from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app
from tests.support.gateways import MakeGateway
from tests.support.processes import Proc
from tests.support.rawclient import RawHandler
from tests.support.standins import Recorder, StartStandIn

# In CI the property tests run a fixed sequence of examples, so that a landing does not
# depend on luck; on a developer's machine they explore anew on every run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def captured_logs() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("json", "DEBUG", stream)
    return stream


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


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """The gateproxy processes a test appends here are killed after it."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    """A TCP server running `handler` per connection; yields a starter returning its URL."""
    servers: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                await server.wait_closed()
