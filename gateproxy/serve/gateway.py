"""The proxy: a `Node` (gateproxy/serve/node.py) serving the proxy's port, and the admin
port when it has one. Builds the parts, opens the listeners, drains on SIGTERM.

Start-up: fail fast on required dependencies, open the listeners, then start the watches.
SIGTERM: `ready` turns 503 at once, everything else is served for `shutdown_delay_ms`,
then the listeners close and in-flight requests get `shutdown_grace_ms` to finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from gateproxy.core.answers import Answer
from gateproxy.core.dependency import DependencyStatus
from gateproxy.core.gate import ADMIN_ENDPOINTS, HEALTH, Guard
from gateproxy.core.model import Config
from gateproxy.core.paths import Rule
from gateproxy.core.watch import UPSTREAM_STATUS, Watch
from gateproxy.http_rules.headers import response_headers
from gateproxy.http_rules.plan import Planner
from gateproxy.logs import log
from gateproxy.serve import listeners
from gateproxy.serve.handler import EndpointHandler, RequestHandler
from gateproxy.serve.listeners import StartupError
from gateproxy.serve.node import Node, WatchFactory, probing
from gateproxy.serve.websocket import WebSocketRelay
from gateproxy.upstream.interface import UpstreamClient
from gateproxy.views import health

__all__ = ["Gateway", "StartupError", "Worker"]


class Worker(Protocol):
    """What makes a proxy one of several workers (gateproxy/workers/control.py): its
    dependencies are watched by following the supervisor, its admin endpoints are the
    supervisor's, and it shares the port."""

    def watch(self, node: Node, status: DependencyStatus) -> Watch: ...

    def admin_handlers(self, names: frozenset[str]) -> Mapping[str, EndpointHandler]: ...


class Gateway:
    """The running proxy: its node, its upstream client, its listeners."""

    def __init__(self, config: Config, upstream: UpstreamClient | None = None,
                 worker: Worker | None = None) -> None:
        self._worker = worker
        self.fence = listeners.inspect(config.fast_path)
        watch: WatchFactory = worker.watch if worker is not None else probing
        self.node = Node(config, watch, lambda: self.websockets.open_count)
        self.upstream = upstream or listeners.upstream_client(config, self.fence,
                                                              self.node.reconnector)
        self.websockets = WebSocketRelay(self.upstream)
        self.planner = Planner(lambda: self.node.runtime.gate, self.on_reject)
        # The fast path's policy (http_rules/actions.py FastPolicy): the planner, the
        # header rules and the counters themselves, one call less each per request.
        self.plan = self.planner.plan
        self.response_headers = response_headers
        self.forwarded = self.count_forwarded
        self.latency = self.node.metrics.observe_upstream
        self._runners: list[web.AppRunner] = []

    @property
    def serving(self) -> bool:
        return self.node.serving

    # --- what requests count -----------------------------------------------------------

    def on_reject(self, rule: Rule[Guard]) -> None:
        """What a gated request does besides its 503: it counts, and it asks for a
        recheck of a dependency that is down."""
        rule.target.monitor.request_recheck()
        self.node.metrics.count_gated(rule.target.status.dep.name, rule.prefix)

    def count_forwarded(self, method: str, status: int, target: str) -> None:
        """Count a forwarded request's answer; one that points at a dependency of its
        route (`recheck_on_status`, rare) asks for a probe of that dependency now."""
        self.node.metrics.count_forwarded(method, status)
        gate = self.node.gate
        if status in gate.recheck_statuses:
            for guard in gate.covering(method, target, status):
                guard.monitor.request_recheck(UPSTREAM_STATUS)

    def count_hold(self, dependency: str, outcome: str) -> None:
        self.node.metrics.count_hold(dependency, outcome)

    # --- the applications -------------------------------------------------------------

    def main_app(self) -> web.Application:
        # auto_decompress off: a gzip request body is forwarded as sent, not inflated
        # under its Content-Encoding and Content-Length. keepalive_timeout: aiohttp's own
        # default (an hour) would let idle clients hold connection slots; 75 s as nginx.
        app = web.Application(handler_args={"max_field_size": 16384,
                                            "auto_decompress": False,
                                            "keepalive_timeout": 75.0})
        endpoints: dict[str, EndpointHandler] = {HEALTH: self._health}
        if self._worker is None:
            endpoints.update(_admin_endpoints(app, self.node))
        else:
            endpoints.update(self._worker.admin_handlers(ADMIN_ENDPOINTS))
        handler = RequestHandler(self.planner, self.node.metrics.timed(self.upstream),
                                 self.websockets, endpoints, self)
        app.middlewares.append(handler.unrouted)
        # One route: the plan decides every request, the proxy's own paths included.
        # `[\s\S]`, not `.`: `.` stops at a decoded `%0A`, which would get aiohttp's own
        # 404 instead of the gate's 400.
        app.router.add_route("*", r"/{tail:[\s\S]*}", handler.handle,
                             expect_handler=handler.expect)
        app.on_shutdown.append(self.websockets.on_shutdown)
        return app

    async def _health(self, request: web.Request) -> Answer:
        cfg = self.node.config
        return await health.health_response(request, self.upstream, cfg.health_path,
                                            cfg.upstream.health_timeout_ms,
                                            self.node.statuses())

    # --- running ----------------------------------------------------------------------

    async def start(self) -> None:
        """Fail fast on required dependencies, listen, then start watching."""
        node = self.node
        down = await node.required_down()
        if down is not None:
            raise StartupError(down)
        cfg = node.config
        fast = listeners.fast_path(self, self.upstream) if self.fence.fast_path else None
        await self._listen(self.main_app(), cfg.listen.host, cfg.listen.port, fast)
        if cfg.admin_port is not None and self._worker is None:  # a supervisor's, else
            await self._listen(_admin_application(node), cfg.listen.host, cfg.admin_port)
        node.serving = True
        node.start_watching()
        log.info("listening", host=cfg.listen.host, port=self.port,
                 adminPort=self.admin_port, upstream=cfg.upstream.url,
                 dependencies=[s.dep.name for s in node.statuses()])

    async def _listen(self, app: web.Application, host: str, port: int,
                      fast: listeners.FastPath | None = None) -> None:
        self._runners.append(await listeners.listen(
            app, host, port, fence=self.fence, config=lambda: self.node.config, fast=fast,
            reuse_port=self._worker is not None))

    @property
    def port(self) -> int:
        return listeners.bound_port(self._runners[0])

    @property
    def admin_port(self) -> int | None:
        return listeners.bound_port(self._runners[1]) if len(self._runners) > 1 else None

    async def stop(self, delay_s: float = 0.0) -> None:
        """Drain: ready says 503 for `delay_s`, then close listeners, finish in-flight
        requests within the grace time, stop watching."""
        self.node.draining = True
        # Nothing waits for the upstream past the drain: those waiting get the 502 now.
        self.node.reconnector.close()
        if delay_s > 0:
            log.info("draining", delayMs=round(delay_s * 1000))
            await asyncio.sleep(delay_s)
        log.info("closing_listeners", graceMs=self.node.config.shutdown_grace_ms)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        self.node.serving = False
        await self.node.stop_watching()
        await self.upstream.close()
        log.info("stopped")

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then drain and stop (README, "Shutdown")."""
        await listeners.until_signalled()
        delay_ms = self.node.config.shutdown_delay_ms
        log.info("shutdown_requested", delayMs=delay_ms)
        await self.stop(delay_ms / 1000)


# The admin endpoints' modules are loaded when first needed: a worker of several relays
# them to its supervisor, and so never loads the page templates' libraries (jinja2).
def _admin_endpoints(app: web.Application, node: Node) -> dict[str, EndpointHandler]:
    from gateproxy.views import admin

    return admin.endpoints(app, node)


def _admin_application(node: Node) -> web.Application:
    from gateproxy.serve import admin_port

    return admin_port.application(node, denied=node.metrics.count_admin_denied)
