"""The proxy: a `Node` (gateproxy/serve/node.py) serving the proxy's port on the HTTP core
(gateproxy/engine/), and the admin port when it has one. Builds the parts, opens the
listeners, drains on SIGTERM.

Start-up: fail fast on required dependencies, open the listeners, then start the watches.
SIGTERM: `ready` turns 503 at once, everything else is served for `shutdown_delay_ms`,
then the listeners close, WebSocket sessions are closed with 1001, and in-flight requests
get `shutdown_grace_ms` to finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from gateproxy.core import answers
from gateproxy.core.answers import Answer
from gateproxy.core.dependency import DependencyStatus
from gateproxy.core.gate import ADMIN_ENDPOINTS, HEALTH, Guard
from gateproxy.core.model import Config
from gateproxy.core.paths import Rule
from gateproxy.core.watch import Watch
from gateproxy.engine.carry import Carrier
from gateproxy.engine.connection import Limits
from gateproxy.engine.flow import HIGH_WATER
from gateproxy.engine.listener import Listener
from gateproxy.engine.tunnel import Tunnels
from gateproxy.engine.upstream import Pool
from gateproxy.http_rules.actions import EndpointHandler, LocalRequest
from gateproxy.http_rules.plan import Planner
from gateproxy.logs import log
from gateproxy.serve.listeners import StartupError, until_signalled
from gateproxy.serve.node import Node, WatchFactory, probing
from gateproxy.views import health

if TYPE_CHECKING:
    from gateproxy.serve.admin_port import AdminSite

__all__ = ["Gateway", "StartupError", "Worker"]

BODY_MIN_RATE = 500  # bytes per second a request body must average, as Apache's mod_reqtimeout


class Worker(Protocol):
    """What makes a proxy one of several workers (gateproxy/workers/control.py): its
    dependencies are watched by following the supervisor, its admin endpoints are the
    supervisor's, and it shares the port."""

    def watch(self, node: Node, status: DependencyStatus) -> Watch: ...

    def admin_handlers(self, names: frozenset[str]) -> Mapping[str, EndpointHandler]: ...


class Gateway:
    """The running proxy: its node, its upstream pool, its listeners."""

    def __init__(self, config: Config, worker: Worker | None = None) -> None:
        self._worker = worker
        self.tunnels = Tunnels()
        watch: WatchFactory = worker.watch if worker is not None else probing
        self.node = Node(config, watch, lambda: self.tunnels.open_count)
        upstream = config.upstream
        self.upstream = Pool(upstream.url, upstream.connect_timeout_ms,
                             upstream.read_timeout_ms, self.node.reconnector)
        self.planner = Planner(self.node, self.on_reject)
        self._listener: Listener | None = None
        self._admin: AdminSite | None = None
        self.port = 0

    @property
    def serving(self) -> bool:
        return self.node.serving

    @property
    def listener(self) -> Listener | None:
        """The proxy port's listener, while it listens."""
        return self._listener

    @property
    def admin_port(self) -> int | None:
        return self._admin.port if self._admin is not None else None

    # --- what requests count (the carrier's Counts) --------------------------------------

    def on_reject(self, rule: Rule[Guard]) -> None:
        """What a gated request does besides its 503: it counts, and it asks for a
        recheck of a dependency that is down."""
        rule.target.monitor.request_recheck()
        self.node.metrics.count_gated(rule.target.status.dep.name, rule.prefix)

    def access_log(self) -> bool:
        """Whether each request gets an access-log line (read per request: live)."""
        return self.node.runtime.config.log.access

    # --- the proxy's own endpoints ---------------------------------------------------

    def _endpoints(self) -> dict[str, EndpointHandler]:
        endpoints: dict[str, EndpointHandler] = {HEALTH: self._health}
        if self._worker is None:
            endpoints.update(_admin_endpoints(self.node))
        else:
            endpoints.update(self._worker.admin_handlers(ADMIN_ENDPOINTS))
        return endpoints

    async def _health(self, request: LocalRequest) -> Answer:
        cfg = self.node.config
        return await health.health_response(request.headers, self.upstream, cfg.health_path,
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
        limits = cfg.limits
        carrier = Carrier(self.planner, self.upstream, self._endpoints(), node.metrics,
                          self.access_log, self.tunnels)
        head_s = limits.header_timeout_ms / 1000
        listener = Listener(carrier, Limits(
            head_timeout_s=head_s, body_timeout_s=head_s, body_min_rate=BODY_MIN_RATE,
            keepalive_s=limits.keepalive_timeout_ms / 1000,
            max_field_size=limits.max_field_size,
            max_head_size=max(HIGH_WATER, 4 * limits.max_field_size)),
            limits.max_connections, answers.error_bytes(
                "too_many_connections",
                f"the proxy is at its limit of {limits.max_connections} connections",
                ("Retry-After", "1")))
        try:
            self.port = await listener.start(cfg.listen.host, cfg.listen.port,
                                             reuse_port=self._worker is not None)
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.listen.host}:{cfg.listen.port}: "
                               f"{exc.strerror or exc}") from exc
        self._listener = listener
        if cfg.admin_port is not None and self._worker is None:  # a supervisor's, else
            self._admin = await _admin_site(node, cfg.listen.host, cfg.admin_port)
        node.serving = True
        node.start_watching()
        log.info("listening", host=cfg.listen.host, port=self.port,
                 adminPort=self.admin_port, upstream=cfg.upstream.url,
                 dependencies=[s.dep.name for s in node.statuses()])

    async def stop(self, delay_s: float = 0.0) -> None:
        """Drain: ready says 503 for `delay_s`, then close listeners, end WebSocket
        sessions with 1001, finish in-flight requests within the grace time, stop
        watching."""
        self.node.draining = True
        # Nothing waits for the upstream past the drain: those waiting get the 502 now.
        self.node.reconnector.close()
        if delay_s > 0:
            log.info("draining", delayMs=round(delay_s * 1000))
            await asyncio.sleep(delay_s)
        grace_ms = self.node.config.shutdown_grace_ms
        log.info("closing_listeners", graceMs=grace_ms)
        listener, self._listener = self._listener, None
        if listener is not None:
            await asyncio.gather(listener.close(grace_ms / 1000), self.tunnels.close_all())
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        self.node.serving = False
        await self.node.stop_watching()
        await self.upstream.close()
        log.info("stopped")

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then drain and stop (README, "Shutdown")."""
        await until_signalled()
        delay_ms = self.node.config.shutdown_delay_ms
        log.info("shutdown_requested", delayMs=delay_ms)
        await self.stop(delay_ms / 1000)


# The admin endpoints' modules are loaded when first needed: a worker of several relays
# them to its supervisor, and so never loads aiohttp's server or the page templates.
def _admin_endpoints(node: Node) -> dict[str, EndpointHandler]:
    from gateproxy.views import admin

    return admin.endpoints(node)


async def _admin_site(node: Node, host: str, port: int) -> AdminSite:
    from gateproxy.serve import admin_port

    return await admin_port.serve(node, host, port, denied=node.metrics.count_admin_denied)
