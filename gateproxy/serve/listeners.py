"""Opening a listener for an aiohttp application, with what the fence allows (the
connection limits and, on the proxy's port, the fast path), and waiting for the signal
to stop.

With gateproxy/serve/public.py, the one way to the fence (gateproxy/aio/): the start-up
check of aiohttp's internals, the lean upstream client and the fast path are built here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Callable

from aiohttp import web

from gateproxy.aio import check, fastpath, server
from gateproxy.aio.check import Fence
from gateproxy.aio.client import FastUpstream
from gateproxy.aio.connector import StepConnector
from gateproxy.core import answers
from gateproxy.core.model import Config
from gateproxy.http_rules.actions import FastPolicy
from gateproxy.serve import public
from gateproxy.upstream.aiohttp_client import AiohttpUpstream
from gateproxy.upstream.interface import UpstreamClient
from gateproxy.upstream.reconnect import Reconnector
from gateproxy.views import accesslog

inspect = check.inspect
parser_problem = check.parser_problem
FastPath = fastpath.FastPath


def upstream_client(config: Config, fence: Fence, connects: Reconnector) -> UpstreamClient:
    """The client that forwards to the upstream: the fence's lean one when the fast
    path is on, aiohttp's ClientSession otherwise (both relay WebSockets through it).
    Both make their connections through `connects`."""
    upstream = config.upstream
    settings = (upstream.url, upstream.connect_timeout_ms, upstream.read_timeout_ms)
    aiohttp_client = AiohttpUpstream(
        *settings, connector=functools.partial(StepConnector, connects))
    if fence.fast_path:
        return FastUpstream(*settings, websockets=aiohttp_client, connects=connects)
    return aiohttp_client


def fast_path(policy: FastPolicy, client: UpstreamClient) -> fastpath.FastPath:
    return fastpath.FastPath(policy, client)


class StartupError(Exception):
    """The proxy cannot start (exit code 1): a port is taken, a required dependency is
    down."""


async def listen(app: web.Application, host: str, port: int, *, fence: Fence,
                 config: Callable[[], Config], fast: fastpath.FastPath | None = None,
                 reuse_port: bool = False) -> web.AppRunner:
    """Serve `app` on host:port; `config` gives the live configuration (the access log
    setting is read per connection). Raises StartupError when the port cannot be had."""
    cfg = config()
    runner = web.AppRunner(
        app, handle_signals=False, handler_cancellation=True,
        shutdown_timeout=cfg.shutdown_grace_ms / 1000,
        **accesslog.runner_options(lambda: config().log.access))
    await runner.setup()
    site: web.BaseSite
    if fence.limits:
        # aiohttp has no request-head timeout and no connection cap: LimitedSite adds both
        # (and a body timeout, with the same allowance as the head). With `fast`, the
        # gate's 503s and plain GETs skip aiohttp's per-request machinery.
        site_class: Callable[..., server.LimitedSite] = (
            server.LimitedSite if fast is None
            else functools.partial(fastpath.FastPathSite, fast=fast))
        site = site_class(
            runner, host, port, backlog=1024, answers=_site_answers(cfg),
            max_connections=cfg.limits.max_connections,
            head_timeout_s=cfg.limits.header_timeout_ms / 1000,
            body_timeout_s=cfg.limits.header_timeout_ms / 1000, reuse_port=reuse_port)
    else:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return runner


def _site_answers(cfg: Config) -> server.SiteAnswers:
    limits = cfg.limits
    return server.SiteAnswers(
        head_timeout=answers.error_bytes(
            "request_timeout",
            f"the request head did not arrive within {limits.header_timeout_ms} ms"),
        refusal=answers.error_bytes(
            "too_many_connections",
            f"the proxy is at its limit of {limits.max_connections} connections",
            ("Retry-After", "1")),
        malformed=lambda: public.respond(
            answers.error("bad_request", "the request is malformed", close=True)),
        failed=lambda: public.respond(
            answers.error("internal_error", "the proxy failed to answer", close=True)))


def bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the listener has no TCP address")


async def until_signalled(signals: tuple[signal.Signals, ...] = (signal.SIGTERM,
                                                                 signal.SIGINT)) -> None:
    """Return when one of `signals` arrives."""
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, arrived.set)
    try:
        await arrived.wait()
    finally:
        for sig in signals:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
