"""Builds the aiohttp applications and runs the proxy: start-up, signals, shutdown.

Start-up: fail fast on required dependencies, open the listeners, then start the probe
loops. SIGTERM: `ready` turns 503 at once, everything else is served for
`shutdown_delay_ms`, then the listeners close and in-flight requests get
`shutdown_grace_ms` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections.abc import Callable

from aiohttp import HttpVersion11, hdrs, web

from gateproxy import accesslog, admin, answers, checks, health, websocket
from gateproxy.aio import check, fastpath, server
from gateproxy.aio.client import FastUpstream
from gateproxy.config import Config, Dependency
from gateproxy.gate import (
    HEALTH,
    NOT_FOUND,
    BadRequest,
    Forward,
    Gate,
    Guard,
    Own,
    Reject,
    Verdict,
    Wait,
)
from gateproxy.logs import log
from gateproxy.metrics import Metrics
from gateproxy.monitor import Monitor
from gateproxy.probe import Prober
from gateproxy.proxy import Forwarder
from gateproxy.routes import Rule
from gateproxy.runtime import ConfigVersion, Runtime
from gateproxy.status import DependencyStatus
from gateproxy.upstream import AiohttpUpstream, UpstreamClient
from gateproxy.websocket import WebSocketRelay

# Where a request keeps its verdict between the expect handler and the handler.
_VERDICT: web.RequestKey[Verdict] = web.RequestKey("gateproxy_verdict")


class StartupError(Exception):
    """The proxy cannot start (exit code 1): a port is taken, a required dependency is
    down."""


class Gateway:
    """The running proxy: its dependencies, its gate, its listeners."""

    def __init__(self, config: Config, upstream: UpstreamClient | None = None) -> None:
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
        return Guard(status, Monitor(status, self.prober, on_result=self.metrics.observe_probe),
                     answers.error_body(dep.not_ready.code, dep.not_ready.message))

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

    def count_reload(self, applied: bool) -> None:
        (self.metrics.reload_applied if applied else self.metrics.reload_rejected).inc()

    # --- the applications -------------------------------------------------------------

    def main_app(self) -> web.Application:
        # auto_decompress off: a gzip request body is forwarded as sent, not inflated
        # under its Content-Encoding and Content-Length. keepalive_timeout: aiohttp's own
        # default (an hour) would let idle clients hold connection slots; 75 s as nginx.
        app = web.Application(handler_args={"max_field_size": 16384,
                                            "auto_decompress": False,
                                            "keepalive_timeout": 75.0})
        self._admin = admin.endpoints(app, self)
        # One route: the gate's verdict decides every request, the proxy's own paths
        # included. `[\s\S]`, not `.`: `.` stops at a decoded `%0A`, which would get
        # aiohttp's own 404 instead of the gate's 400.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._serve,
                             expect_handler=self._expect)
        app.on_shutdown.append(self.websockets.on_shutdown)
        return app

    def admin_app(self) -> web.Application:
        app = web.Application()
        prefix = self.config.admin_prefix
        for name, handler in admin.endpoints(app, self).items():
            app.router.add_get(f"{prefix}/{name}", handler)
        return app

    async def _health(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        return await health.health_response(request, self.upstream, cfg.health_path,
                                            cfg.upstream.health_timeout_ms, self.statuses())

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
                # The first probe is running: its answer is worth a short wait.
                guard = verdict.guard
                await guard.monitor.wait_first(guard.status.dep.probe_timeout_ms / 1000)
                verdict = self.gate.decide(request.method, request.raw_path, request.headers)
            request[_VERDICT] = verdict
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
        return None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
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
        answer = checks.request_problem(request)
        if answer is not None:
            return answer
        request[accesslog.OUTCOME] = accesslog.FORWARDED
        if request.headers.get(hdrs.UPGRADE) is not None and websocket.is_upgrade(request):
            # Not a forwarded request in the metrics: a session usually ends with the
            # client hanging up, which cancels this handler (the gauge counts sessions).
            return await self.websockets.relay(request, verdict.target)
        response = await self.forwarder.forward(request, verdict.target)
        self.metrics.count_forwarded(request.method, response.status)
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
        for guard in self.guards:
            if not guard.status.dep.optional:
                await guard.monitor.probe_once()
                if not guard.status.is_up:
                    error = guard.status.last_error
                    raise StartupError(
                        f"required dependency {guard.status.dep.name} is not ready "
                        f"({error.code if error else 'unknown'}: "
                        f"{error.message if error else ''})")
        cfg = self.config
        fast = None
        if self.fence.fast_path:
            fast = fastpath.FastPath(lambda: self.runtime.gate, self.upstream,
                                     self.on_reject, self.metrics.count_forwarded,
                                     self.metrics.observe_upstream)
        await self._listen(self.main_app(), cfg.listen.host, cfg.listen.port, fast)
        if cfg.admin_port is not None:
            await self._listen(self.admin_app(), cfg.listen.host, cfg.admin_port)
        for guard in self.guards:
            guard.monitor.start()
        log.info("listening", host=cfg.listen.host, port=self.port,
                 adminPort=self.admin_port, upstream=cfg.upstream.url,
                 dependencies=[g.status.dep.name for g in self.guards])

    async def _listen(self, app: web.Application, host: str, port: int,
                      fast: fastpath.FastPath | None = None) -> None:
        runner = web.AppRunner(
            app, handle_signals=False, handler_cancellation=True,
            shutdown_timeout=self.config.shutdown_grace_ms / 1000,
            **accesslog.runner_options(lambda: self.config.log.access))
        await runner.setup()
        site: web.BaseSite
        if self.fence.limits:
            # aiohttp has no request-head timeout and no connection cap: LimitedSite adds
            # both (and a body timeout, with the same allowance as the head). With `fast`,
            # the gate's 503s and plain GETs skip aiohttp's per-request machinery.
            limits_cfg = self.config.limits
            site_class: Callable[..., server.LimitedSite] = (
                server.LimitedSite if fast is None
                else functools.partial(fastpath.FastPathSite, fast=fast))
            site = site_class(
                runner, host, port, backlog=1024, max_connections=limits_cfg.max_connections,
                head_timeout_s=limits_cfg.header_timeout_ms / 1000,
                body_timeout_s=limits_cfg.header_timeout_ms / 1000)
        else:
            site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                               ) from exc
        self._runners.append(runner)

    @property
    def port(self) -> int:
        return _bound_port(self._runners[0])

    @property
    def admin_port(self) -> int | None:
        return _bound_port(self._runners[1]) if len(self._runners) > 1 else None

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
        """Run until SIGTERM or SIGINT, then stop as the contract says."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, stopping.set)
        try:
            await stopping.wait()
            log.info("shutdown_requested", delayMs=self.config.shutdown_delay_ms)
            await self.stop(self.config.shutdown_delay_ms / 1000)
        finally:
            for sig in signals:
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the listener has no TCP address")

