"""`gateproxy demo`: the whole thing on loopback, with nothing else installed.

A stand-in platform-server and a stand-in docker-runner that goes down and comes back on
a timer (or from the button on the stand-in's demo page), gateproxy in front, serving
from a configuration file of its own so that editing it shows a live reload. With
`--grpc` the docker-runner is the gRPC-era one (signed RunnerService/Ready). It prints
what to open and what to try; Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time

from gateproxy import config, logs
from gateproxy.demo.standins import StandIn, Switchable, docker_runner, platform_server
from gateproxy.logs import log
from gateproxy.serve.gateway import Gateway
from gateproxy.serve.listeners import StartupError
from gateproxy.serve.reload import Reloader

DOWN_S, UP_S = 15.0, 25.0
HOST = "127.0.0.1"

CONFIG = """\
# The demo's configuration: edit and save it, gateproxy reloads it live
# (try adding /api/threads under gated_routes, or changing probe_interval_ms).
listen: {{host: {host}, port: {port}}}
upstream: {{url: "{upstream}"}}
log: {{format: text, level: INFO, access: false}}
shutdown_delay_ms: 0
shutdown_grace_ms: 2000
dependencies:
  - name: docker-runner
    health_key: dockerRunner
    probe: {probe}
    base_url: "{runner}"
    probe_interval_ms: 2000
    retry: {{base_delay_ms: 500, max_delay_ms: 4000, jitter_ms: 250}}
    gated_routes:
      - /api/containers
    not_ready: {{code: docker_runner_not_ready, message: docker-runner not ready}}
"""


# The signature the gRPC stand-in checks (its Ready is not exempt, as on the real runner).
DEMO_SECRET = "gateproxy-demo-secret"


async def _start(standin: Switchable) -> None:
    """Start on the preferred port, or on any free one when it is taken."""
    try:
        await standin.start()
    except OSError:
        standin.port = 0
        await standin.start()


async def _flip_on_a_timer(runner: Switchable) -> None:
    """Flip docker-runner after DOWN_S down or UP_S up; a flip from the demo page starts
    the period again."""
    while True:
        period = UP_S if runner.running else DOWN_S
        left = runner.changed_at + period - time.monotonic()
        if left > 0:
            await asyncio.sleep(min(left, 0.5))
            continue
        try:
            await runner.flip()
        except OSError as exc:  # its port was taken meanwhile: try again next period
            log.error("demo_flip_failed", message=str(exc))
            runner.changed_at = time.monotonic()
            continue
        log.warning("demo_docker_runner_started" if runner.running
                    else "demo_docker_runner_stopped",
                    nextChangeInS=UP_S if runner.running else DOWN_S)


def _banner(base: str, cfg: config.Config, path: str) -> str:
    admin = f"{base}{cfg.admin_prefix}"
    dep = cfg.dependencies[0]
    return f"""
gateproxy demo is running (Ctrl-C stops it), probing docker-runner over {dep.probe} at
{dep.base_url}{dep.ready_path}. docker-runner starts DOWN, comes back after
{DOWN_S:.0f} s, and then alternates ({UP_S:.0f} s up, {DOWN_S:.0f} s down).

  status page     {admin}/status
  demo page       {base}/demo      (its button flips docker-runner)
  metrics         {admin}/metrics
  configuration   {path}
                  (edit and save it: gateproxy reloads it live)

  curl -i {base}/api/containers          # 503 while docker-runner is down, 200 when up
  curl -i {base}/api/threads             # always forwarded
  curl -s {base}/health                  # aggregated health
  curl -s -H 'Accept: application/health+json' {base}/health
  curl -N {base}/api/events/sse          # Server-Sent Events through the proxy
  WebSocket echo: ws://{base.removeprefix("http://")}/api/echo/ws
"""


async def main(port: int, seconds: float, grpc: bool = False) -> int:
    logs.configure("text", "INFO")
    runner: Switchable
    env = {}
    if grpc:
        from gateproxy.demo.grpc_standin import GrpcRunner  # grpclib only when asked for

        runner = GrpcRunner(HOST, port=50051, secret=DEMO_SECRET)
        env = {"DOCKER_RUNNER_SHARED_SECRET": DEMO_SECRET}
    else:
        runner = StandIn(docker_runner(), HOST, port=7071)
    platform = StandIn(platform_server(runner), HOST, port=3010)
    await _start(platform)
    await _start(runner)
    await runner.stop()  # docker-runner starts down, as when the platform boots first
    with tempfile.TemporaryDirectory(prefix="gateproxy-demo-") as directory:
        path = os.path.join(directory, "gateproxy.yaml")
        with open(path, "w", encoding="utf-8") as f:  # noqa: ASYNC230 - tiny, once
            f.write(CONFIG.format(host=HOST, port=port, upstream=platform.url,
                                  probe="grpc" if grpc else "http", runner=runner.url))
        # The demo must not pick up PLATFORM_SERVER_URL and friends from the shell.
        cfg = config.load(path, env=env)
        gateway = Gateway(cfg)
        try:
            await gateway.start()
        except StartupError as exc:
            log.error("startup_failed", message=f"{exc} (try: gateproxy demo --port 8181)")
            await gateway.stop()
            await platform.stop()
            return 1
        print(_banner(f"http://{HOST}:{gateway.port}", cfg, path), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        flipper = loop.create_task(_flip_on_a_timer(runner))
        try:
            async with Reloader(gateway.node, env=env).running():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(seconds or None):
                        await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            flipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flipper
            await gateway.stop()
            await runner.stop()
            await platform.stop()
    log.info("demo_stopped")
    return 0
