"""Builds the aiohttp applications and runs the proxy: start-up, signals, shutdown.

Start-up: fail fast on required dependencies, open the listeners, then start the probe
loops. SIGTERM: `ready` turns 503 at once, everything else is served for
`shutdown_delay_ms`, then the listeners close and in-flight requests get
`shutdown_grace_ms` to finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion11, hdrs, web

from gateproxy.aio import check, fastpath
from gateproxy.aio.client import FastUpstream
from gateproxy.core import answers
from gateproxy.core.dependency import DependencyStatus
from gateproxy.core.gate import (
    ADMIN_ENDPOINTS,
    HEALTH,
    NOT_FOUND,
    SERVER_OPTIONS,
    BadRequest,
    Forward,
    Gate,
    Guard,
    Own,
    Reject,
    Verdict,
    Wait,
)
from gateproxy.core.model import Config, Dependency
from gateproxy.core.paths import Rule
from gateproxy.core.runtime import ConfigVersion, Runtime
from gateproxy.http_rules import request_checks
from gateproxy.http_rules.headers import Forwarder
from gateproxy.logs import log
from gateproxy.monitor.loop import UPSTREAM_STATUS, Monitor, Watch, first_required_down
from gateproxy.monitor.probe import Prober
from gateproxy.serve import listeners, websocket
from gateproxy.serve.listeners import StartupError
from gateproxy.serve.websocket import WebSocketRelay
from gateproxy.upstream.client import AiohttpUpstream, UpstreamClient
from gateproxy.views import accesslog, health
from gateproxy.views.metrics import Metrics
from gateproxy.workers.control import WorkerLink

# Where a request keeps its verdict between the expect handler and the handler.
_VERDICT: web.RequestKey[Verdict] = web.RequestKey("gateproxy_verdict")


class Gateway:
    """The running proxy: its dependencies, its gate, its listeners."""

    def __init__(self, config: Config, upstream: UpstreamClient | None = None,
                 link: WorkerLink | None = None) -> None:
        # With a link, this is one of several workers (gateproxy/workers/supervisor.py): it follows
        # the supervisor's probes and shares the port.
        self._link = link
        self.fence = check.inspect(config.fast_path)
        self.metrics = Metrics(self.statuses, lambda: self.websockets.open_count)
        self.prober = Prober()
        client = FastUpstream if self.fence.fast_path else AiohttpUpstream
        self.upstream = upstream or client(
            config.upstream.url, config.upstream.connect_timeout_ms,
            config.upstream.read_timeout_ms)
        self.forwarder = Forwarder(self.metrics.timed(self.upstream))
        self.websockets = WebSocketRelay(self.upstream)
        guards = [self.make_guard(dep) for dep in config.dependencies]
        self.runtime = Runtime(config, Gate.build(guards, config), ConfigVersion.of(config, 1))
        self.draining = False
        self.started_at = time.time()
        self._runners: list[web.AppRunner] = []

    def make_guard(self, dep: Dependency) -> Guard:
        status = DependencyStatus(dep)
        watch: Watch = (self._link.follow(status) if self._link is not None else
                        Monitor(status, self.prober, on_result=self.metrics.observe_probe))
        return Guard(status, watch, answers.error_body(dep.not_ready.code,
                                                       dep.not_ready.message))

    def statuses(self) -> list[DependencyStatus]:
        return [g.status for g in self.runtime.guards]

    # Read-only views of the live state (a reload replaces `runtime` as a whole).
    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def gate(self) -> Gate:
        return self.runtime.gate

    @property
    def guards(self) -> tuple[Guard, ...]:
        return self.runtime.gate.guards

    @property
    def serving(self) -> bool:
        return bool(self._runners)

    def exposition(self) -> bytes:
        return self.metrics.exposition()

    def recent(self) -> dict[str, Any]:
        return {**self.metrics.recent(),
                "held": {s.dep.name: s.held for s in self.statuses()}}

    def stats(self) -> dict[str, Any]:
        """What a worker reports to its supervisor every second."""
        return {"metrics": self.exposition().decode(), "recent": self.recent()}

    def count_reload(self, applied: bool) -> None:
        (self.metrics.reload_applied if applied else self.metrics.reload_rejected).inc()

    # --- the applications -------------------------------------------------------------

    def main_app(self) -> web.Application:
        # auto_decompress off: a gzip request body is forwarded as sent, not inflated
        # under its Content-Encoding and Content-Length. keepalive_timeout: aiohttp's own
        # default (an hour) would let idle clients hold connection slots; 75 s as nginx.
        app = web.Application(handler_args={"max_field_size": 16384,
                                            "auto_decompress": False,
                                            "keepalive_timeout": 75.0},
                              middlewares=[self._unrouted])
        if self._link is None:
            self._admin = _admin_endpoints(app, self)
        else:
            self._admin = self._link.admin_handlers(ADMIN_ENDPOINTS)
        # One route: the gate's verdict decides every request, the proxy's own paths
        # included. `[\s\S]`, not `.`: `.` stops at a decoded `%0A`, which would get
        # aiohttp's own 404 instead of the gate's 400.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._serve,
                             expect_handler=self._expect)
        app.on_shutdown.append(self.websockets.on_shutdown)
        return app

    def admin_app(self) -> web.Application:
        return _admin_application(self)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        return await health.health_response(request, self.upstream, cfg.health_path,
                                            cfg.upstream.health_timeout_ms, self.statuses())

    def count_forwarded(self, method: str, status: int, target: str) -> None:
        """Count a forwarded request's answer; one that points at a dependency of its
        route (`recheck_on_status`, rare) asks for a probe of that dependency now."""
        self.metrics.count_forwarded(method, status)
        gate = self.runtime.gate
        if status in gate.recheck_statuses:
            for guard in gate.covering(method, target, status):
                guard.monitor.request_recheck(UPSTREAM_STATUS)

    def on_reject(self, rule: Rule[Guard]) -> None:
        """What a gated request does besides its 503: it counts, and it asks for a
        recheck of a dependency that is down."""
        rule.target.monitor.request_recheck()
        self.metrics.count_gated(rule.target.status.dep.name, rule.prefix)

    async def _decide(self, request: web.BaseRequest) -> Verdict:
        """The gate's verdict, after the short wait for a first probe if there is one."""
        verdict = request.get(_VERDICT)
        if verdict is None:
            verdict = self.gate.decide(request.method, request.raw_path, request.headers)
            if isinstance(verdict, Wait):
                verdict = await self._wait(request, verdict)
            request[_VERDICT] = verdict
        return verdict

    async def _wait(self, request: web.BaseRequest, wait: Wait) -> Verdict:
        """Wait as the verdict says, then decide again: a first probe's answer is worth a
        short wait; a held request waits up to hold_ms for its dependency to come back."""
        monitor = wait.guard.monitor
        if not wait.hold:
            await monitor.wait_change(wait.timeout_s)
            return self.gate.decide(request.method, request.raw_path, request.headers, True)
        name = wait.guard.status.dep.name
        try:
            held = await monitor.hold(wait.timeout_s, wait.guard.status.dep.hold_max_requests)
        except asyncio.CancelledError:  # the client went away: its slot is free again
            self.metrics.count_hold(name, "cancelled")
            raise
        verdict = self.gate.decide(request.method, request.raw_path, request.headers, True)
        if held:
            self.metrics.count_hold(name, "forwarded" if isinstance(verdict, Forward)
                                    else "timed_out")
        return verdict

    def _answer(self, request: web.BaseRequest, verdict: Verdict) -> web.StreamResponse | None:
        """The proxy's own answer to a request it does not forward (None: it forwards)."""
        if isinstance(verdict, Reject):
            self.on_reject(verdict.rule)
            request[accesslog.OUTCOME] = accesslog.GATED
            headers = self.gate.rejection_headers(verdict.rule.target,
                                                  request.headers.get(hdrs.ORIGIN))
            return answers.own(503, verdict.rule.target.body, headers)
        if isinstance(verdict, BadRequest):
            return answers.error("bad_request", verdict.message)
        if isinstance(verdict, Own) and verdict.endpoint == NOT_FOUND:
            return answers.error("not_found", "no such endpoint of the proxy")
        if isinstance(verdict, Own) and verdict.endpoint == SERVER_OPTIONS:
            return answers.server_options(answers.ALLOW)
        return None

    @web.middleware
    async def _unrouted(self, request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
        """A target the one route cannot match (`*`: routes start with `/`) goes to the
        same handler, not to aiohttp's own 404."""
        if request.match_info.http_exception is not None:
            return await self._serve(request)
        return await handler(request)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        close = request_checks.ends_connection(request.headers)
        response = await self._respond(request, close)
        if close:
            response.force_close()
        return response

    async def _respond(self, request: web.Request, close: bool) -> web.StreamResponse:
        verdict = await self._decide(request)
        answer = self._answer(request, verdict)
        if answer is not None:
            return answer
        if isinstance(verdict, Own):
            if verdict.endpoint == HEALTH:
                return await self._health(request)
            return await self._admin[verdict.endpoint](request)
        assert isinstance(verdict, Forward)
        # After the gate (a gated path gets its 503 whatever else is wrong), before the
        # upstream: what aiohttp's parser accepts but would make the two of us disagree.
        answer = request_checks.request_problem(request)
        if answer is not None:
            return answer
        request[accesslog.OUTCOME] = accesslog.FORWARDED
        if request.headers.get(hdrs.UPGRADE) is not None and websocket.is_upgrade(request):
            # Not a forwarded request in the metrics: a session usually ends with the
            # client hanging up, which cancels this handler (the gauge counts sessions).
            return await self.websockets.relay(request, verdict.target)
        response = await self.forwarder.forward(request, verdict.target, close)
        self.count_forwarded(request.method, response.status, verdict.target)
        return response

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """Answer a gated `Expect: 100-continue` before the client sends its body."""
        answer = self._answer(request, await self._decide(request))
        if answer is not None:
            answer.force_close()  # the unsent body must not be read as the next request
            return answer
        expect = request.headers.get(hdrs.EXPECT, "")
        if request.version == HttpVersion11 and expect.lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        if request.version == HttpVersion11:
            return answers.error("expectation_failed", "only 100-continue is understood")
        return None

    # --- running ----------------------------------------------------------------------

    async def start(self) -> None:
        """Fail fast on required dependencies, listen, then start probing."""
        down = await first_required_down(g.monitor for g in self.guards)
        if down is not None:
            raise StartupError(down)
        cfg = self.config
        fast = None
        if self.fence.fast_path:
            fast = fastpath.FastPath(lambda: self.runtime.gate, self.upstream,
                                     self.on_reject, self.count_forwarded,
                                     self.metrics.observe_upstream)
        await self._listen(self.main_app(), cfg.listen.host, cfg.listen.port, fast)
        if cfg.admin_port is not None and self._link is None:  # a supervisor's, else
            await self._listen(self.admin_app(), cfg.listen.host, cfg.admin_port)
        for guard in self.guards:
            guard.monitor.start()
        log.info("listening", host=cfg.listen.host, port=self.port,
                 adminPort=self.admin_port, upstream=cfg.upstream.url,
                 dependencies=[g.status.dep.name for g in self.guards])

    async def _listen(self, app: web.Application, host: str, port: int,
                      fast: fastpath.FastPath | None = None) -> None:
        self._runners.append(await listeners.listen(
            app, host, port, fence=self.fence, config=lambda: self.config, fast=fast,
            reuse_port=self._link is not None))

    @property
    def port(self) -> int:
        return listeners.bound_port(self._runners[0])

    @property
    def admin_port(self) -> int | None:
        return listeners.bound_port(self._runners[1]) if len(self._runners) > 1 else None

    async def stop(self, delay_s: float = 0.0) -> None:
        """Drain: ready says 503 for `delay_s`, then close listeners, finish in-flight
        requests within the grace time, stop probing."""
        self.draining = True
        if delay_s > 0:
            log.info("draining", delayMs=round(delay_s * 1000))
            await asyncio.sleep(delay_s)
        log.info("closing_listeners", graceMs=self.config.shutdown_grace_ms)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for guard in self.guards:
            await guard.monitor.stop()
        await self.prober.close()
        await self.upstream.close()
        log.info("stopped")

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then drain and stop (README, "Shutdown")."""
        await listeners.until_signalled()
        log.info("shutdown_requested", delayMs=self.config.shutdown_delay_ms)
        await self.stop(self.config.shutdown_delay_ms / 1000)


# The admin endpoints' module is loaded when first needed: a worker of several relays them
# to its supervisor, and so never loads the page templates' libraries (jinja2: some MiB).
def _admin_endpoints(app: web.Application, gateway: Gateway
                     ) -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    from gateproxy.views import admin

    return admin.endpoints(app, gateway)


def _admin_application(gateway: Gateway) -> web.Application:
    from gateproxy.views import admin

    return admin.application(gateway, denied=gateway.metrics.count_admin_denied)
