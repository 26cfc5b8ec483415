"""`gateproxy demo`: the whole thing on loopback, with nothing else installed.

A stand-in platform-server and a stand-in docker-runner that goes down and comes back on
a timer, gateproxy in front; it prints what to open and what to try.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from gateproxy import config, logs
from gateproxy.app import Gateway, StartupError
from gateproxy.logs import log
from gateproxy.standins import StandIn, docker_runner, platform_server

DOWN_S, UP_S = 15.0, 25.0


async def _start(standin: StandIn) -> None:
    """Start on the preferred port, or on any free one when it is taken."""
    try:
        await standin.start()
    except OSError:
        standin.port = 0
        await standin.start()


async def _flip_forever(runner: StandIn) -> None:
    while True:
        await asyncio.sleep(DOWN_S if not runner.running else UP_S)
        if runner.running:
            await runner.stop()
            log.warning("demo_docker_runner_stopped", nextChangeInS=DOWN_S)
        else:
            await runner.start()
            log.warning("demo_docker_runner_started", nextChangeInS=UP_S)


async def main(port: int, seconds: float) -> int:
    logs.configure("text", "INFO")
    runner = StandIn(docker_runner(), port=7071)
    platform = StandIn(platform_server(runner), port=3010)
    await _start(platform)
    await _start(runner)
    await runner.stop()  # docker-runner starts down, as when the platform boots first
    cfg = config.load(None, {
        "GATEPROXY_HOST": "127.0.0.1",
        "GATEPROXY_PORT": str(port),
        "PLATFORM_SERVER_URL": platform.url,
        "DOCKER_RUNNER_BASE_URL": runner.url,
        "DOCKER_RUNNER_CONNECT_PROBE_INTERVAL_MS": "2000",
        "DOCKER_RUNNER_CONNECT_RETRY_MAX_DELAY_MS": "4000",
        "GATEPROXY_LOG_FORMAT": "text",
    })
    gateway = Gateway(cfg)
    try:
        await gateway.start()
    except StartupError as exc:
        log.error("startup_failed", message=f"{exc} (try: gateproxy demo --port 8181)")
        await gateway.stop()
        await platform.stop()
        return 1
    base = f"http://127.0.0.1:{gateway.port}"
    print(f"""
gateproxy demo is running (Ctrl-C stops it). docker-runner starts DOWN, comes back after
{DOWN_S:.0f} s, and then alternates ({UP_S:.0f} s up, {DOWN_S:.0f} s down).

  status page     {base}{cfg.admin_prefix}/status
  stand-in page   {base}/demo      (a button flips docker-runner)

  curl -i {base}/api/containers          # 503 while docker-runner is down, 200 when up
  curl -i {base}/api/threads             # always forwarded
  curl -s {base}/health                  # aggregated health
  curl -N {base}/api/events/sse          # Server-Sent Events through the proxy
""", flush=True)
    flipper = asyncio.get_running_loop().create_task(_flip_forever(runner))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds or None):
            await stop.wait()
    flipper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flipper
    await gateway.stop()
    await runner.stop()
    await platform.stop()
    return 0
