"""The proxy's two busiest answers, given without aiohttp's per-request machinery.

Through aiohttp's usual path every request costs a task, a Request, the router, a
response object, its header preparation and a few writes; measured, that machinery is
most of what a gated 503 costs and half of what a small forwarded GET costs
(docs/performance.md). `FastPathHandler` takes plain GETs right after aiohttp's parser
has produced them, in `data_received`, asks the proxy's planner what to do (the same
`plan` aiohttp's usual path asks: gateproxy/http_rules/plan.py) and carries out two
kinds of action:

- an answer of the proxy's own (the gate's 503, a 400 for a bad path...): its bytes,
  written at once, as the usual path writes them;
- a forward: to the plan's target with the plan's headers. On an idle pooled upstream
  connection it is carried by the two protocols' callbacks, without a task: the head
  goes upstream in one write, and when the upstream protocol has parsed an answer
  delimited by a Content-Length whose whole body has arrived (small answers), its
  `data_received` writes it to the client in one write and takes the next request
  (`_Callbacks`). Everything else is finished by a task (`FastPath.forward`): the
  connect when no pooled connection is idle, the retry of a stale one, errors and
  timeouts, and the answers that are not whole yet, whose body is piped from the
  upstream connection to the client's as it arrives (large downloads: no parsing,
  queueing or task switch per piece), or, when not delimited by a Content-Length
  (chunked, close-delimited, empty by its status), relayed by `relay` on a real aiohttp
  Request.

Everything else goes the usual way, where it is planned again: requests with a body,
other methods, HTTP/1.0, `Connection: close`, upgrades, `Expect`, the other actions (a
wait, an endpoint), and every request while the access log is on. Planning a GET has
no side effect but for the gate's 503, which the fast path always writes. Requests on
one connection are answered in order: while a forward is in flight, what arrives waits
in aiohttp's queue, and aiohttp's loop is woken only when the fast path leaves a
request to it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

# Private names are read from their modules when used, not imported: a name a newer
# aiohttp lacks then fails the start-up check (and the fast path is off), not the import.
from aiohttp import helpers, http_parser, http_writer, web
from aiohttp.http import HttpVersion11, RawRequestMessage, StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD

from gateproxy.aio.client import FastResponse, FastUpstream, PipeSlot, Sent
from gateproxy.aio.needs import Need
from gateproxy.aio.server import LimitedHandler, LimitedSite
from gateproxy.aio.wire import relay
from gateproxy.http_rules.actions import (
    Answer,
    FastPolicy,
    ForwardPlan,
    Gated,
    RequestHead,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    error,
    render,
)
from gateproxy.logs import log

REQUIRES: Final = (
    Need(web.RequestHandler, "pause_writing", call=True),
    Need(web.RequestHandler, "resume_writing", call=True),
    Need(web.RequestHandler, "_waiter"),
    Need(web.RequestHandler, "_messages"),
    Need(web.RequestHandler, "_logging_enabled"),
    Need(web.RequestHandler, "_upgraded"),
    Need(web.RequestHandler, "_payload_parser"),
    Need(web.RequestHandler, "_force_close"),
    Need(web.RequestHandler, "_close"),
    Need(web.RequestHandler, "_parser"),
    Need(web.RequestHandler, "_manager"),
    Need(web.RequestHandler, "_request_in_progress"),
    Need(web.RequestHandler, "_keepalive_handle"),
    Need(web.RequestHandler, "_keepalive_timeout"),
    Need(web.RequestHandler, "_next_keepalive_close_time"),
    Need(web.RequestHandler, "_process_keepalive", call=True),
    Need(web.RequestHandler, "_buffer_paused"),
    Need(web.RequestHandler, "_msg_queue_resume_size"),
    Need(web.RequestHandler, "_resume_reading_if_drained", call=True),
    Need(web.RequestHandler, "_handler_waiter"),
    Need(web.RequestHandler, "_request_factory"),
    Need(web.RequestHandler, "_task_handler"),
    Need(web.RequestHandler, "_loop"),
    Need(web.Server, "requests_count"),
    Need(web.BaseRequest, "_finish", call=True),
    Need(web.Server, "_kwargs"),
    Need(web.BaseSite, "_runner"),
    Need(http_parser.HttpRequestParser, "message_consumed", call=True),
    # The parsed message: an internal type, read by field.
    *(Need(RawRequestMessage, field) for field in (
        "method", "path", "version", "headers", "raw_headers", "should_close")),
    Need(http_writer, "_serialize_headers", call=True),
    Need(helpers, "rfc822_formatted_time", call=True),
    Need(StreamWriter, "__init__", param="protocol"),
)

# aiohttp answers these with no body and drops their Content-Length.
_EMPTY_STATUS: Final = frozenset({204, 304})
_RENDERED_MAX: Final = 64  # distinct own answers whose bytes are kept (503s: one a guard)


class FastPath:
    """Carries out, for one parsed GET, the actions it can alone: an own answer, or a
    forward."""

    def __init__(self, policy: FastPolicy, client: UpstreamClient) -> None:
        self._policy = policy
        self._client = client
        # Forwards carried by callbacks need the lean client's pooled connections.
        self._lean = client if isinstance(client, FastUpstream) else None
        # The bytes of recent own answers, with the Date they were made with: a 503's
        # bytes change with its Retry-After (a header of the answer) and the Date only.
        self._rendered: dict[Answer, tuple[str, bytes]] = {}

    def take(self, message: RawRequestMessage, peername: object, tls: bool
             ) -> Answer | ForwardPlan | None:
        """The action for a GET the fast path carries out, or None for the usual path.
        The caller has checked that the request is HTTP/1.1, keep-alive and bodiless."""
        headers = message.headers
        if message.method != "GET" or "Expect" in headers or "Upgrade" in headers:
            return None
        version = message.version
        action = self._policy.plan(RequestHead(
            "GET", message.path, (version.major, version.minor), headers,
            message.raw_headers, peername, tls))
        kind = type(action)
        if kind is Gated:
            return action.answer  # type: ignore[union-attr]
        if kind is Answer or kind is ForwardPlan:
            return action  # type: ignore[return-value]
        return None

    def rendered(self, answer: Answer) -> bytes:
        """`answer`'s bytes, as aiohttp's usual path writes them."""
        date = helpers.rfc822_formatted_time()
        last = self._rendered.get(answer)
        if last is None or last[0] != date:
            if len(self._rendered) >= _RENDERED_MAX:
                self._rendered.clear()
            last = self._rendered[answer] = (date, render(answer, date))
        return last[1]

    # --- forwarding -------------------------------------------------------------------

    def begin(self, handler: FastPathHandler, message: RawRequestMessage,
              plan: ForwardPlan) -> _Callbacks | None:
        """Send a bodiless GET upstream on an idle pooled connection, its answer awaited
        by callbacks; None when there is none (`forward` does it all then)."""
        started = time.perf_counter()
        lean = self._lean
        sent = None if lean is None else lean.begin(plan.target, plan.headers)
        if sent is None:
            return None
        callbacks = _Callbacks(handler, message, plan, sent, started)
        sent.listen(callbacks)
        return callbacks

    def answer_whole(self, handler: FastPathHandler, upstream: UpstreamResponse,
                     plan: ForwardPlan, started: float) -> bool | None:
        """Write an answer whose whole body, delimited by a Content-Length, has arrived:
        head and body in one write (from the upstream protocol's callback, or the task's).
        True or False as `forward`; None when it is not such an answer."""
        if not isinstance(upstream, FastResponse) or not upstream.arrived:
            return None
        head = self._framed_head(upstream)
        if head is None:
            return None
        policy = self._policy
        policy.latency(time.perf_counter() - started)
        transport = handler.transport
        body = None if transport is None else upstream.whole_body()
        if transport is None or body is None:  # the client's connection is gone
            upstream.close()
            return False
        policy.forwarded("GET", upstream.status, plan.target)
        transport.writelines([head, body])
        return True

    async def forward(self, handler: FastPathHandler, message: RawRequestMessage,
                      plan: ForwardPlan, begun: _Callbacks | None) -> bool:
        """Forward a bodiless GET as `plan` says, or finish the forward `begin` began;
        True when the client connection may take its next request. The aiohttp Request
        the usual path works on is made only when an answer needs one."""
        policy = self._policy
        started = time.perf_counter() if begun is None else begun.started
        try:
            upstream = await (self._client.send("GET", plan.target, plan.headers, None)
                              if begun is None else begun.sent.finish())
        except UpstreamError as exc:
            answer = error(exc.code, exc.message)
            policy.forwarded("GET", answer.status, plan.target)
            transport = handler.transport
            if transport is None:
                return False
            transport.write(self.rendered(answer))
            return True
        try:
            keep = self.answer_whole(handler, upstream, plan, started)
            if keep is not None:
                return keep
            policy.latency(time.perf_counter() - started)
            head = self._framed_head(upstream)
            if head is None:
                request = handler.make_request(message)
                response = await relay(request, upstream,
                                       policy.response_headers(upstream.raw_headers))
                policy.forwarded("GET", response.status, plan.target)
                request._finish()
                # relay aborts the client connection when the upstream breaks off.
                transport = handler.transport
                return bool(response.keep_alive) and transport is not None \
                    and not transport.is_closing()
            assert isinstance(upstream, FastResponse)
            transport = handler.transport
            if transport is None:
                return False
            policy.forwarded("GET", upstream.status, plan.target)
            transport.write(head)
            if await upstream.pipe_body(transport, handler.pipes):
                return True
            # The head is out: the only honest signal left is an unclean end, never a
            # short body that looks complete.
            transport.abort()
            return False
        finally:
            upstream.close()

    def _framed_head(self, upstream: UpstreamResponse) -> bytes | None:
        """For an answer delimited by a Content-Length, the head `relay` would write to
        an HTTP/1.1 keep-alive client; None for anything else (left to `relay`)."""
        if not isinstance(upstream, FastResponse) or not upstream.pipeable \
                or upstream.status < 200 or upstream.status in _EMPTY_STATUS:
            return None
        headers = self._policy.response_headers(upstream.raw_headers)
        if "Date" not in headers:
            headers["Date"] = helpers.rfc822_formatted_time()
        return http_writer._serialize_headers(
            f"HTTP/1.1 {upstream.status} {upstream.reason}", headers)


class _Callbacks:
    """A forward carried by the two protocols' callbacks, without a task: the upstream
    connection calls it on each event until its answer's head has arrived or the
    exchange failed. A whole small answer is then written at once; anything else is
    handed, half done, to a task that finishes it (`FastPath.forward`)."""

    __slots__ = ("handler", "message", "plan", "sent", "started")

    def __init__(self, handler: FastPathHandler, message: RawRequestMessage, plan: ForwardPlan,
                 sent: Sent, started: float) -> None:
        self.handler = handler
        self.message = message
        self.plan = plan
        self.sent = sent
        self.started = started

    def __call__(self) -> None:
        sent = self.sent
        if not sent.poll():
            return  # a head still in pieces
        handler = self.handler
        upstream = sent.response
        try:
            keep = None if upstream is None else handler._fast.answer_whole(
                handler, upstream, self.plan, self.started)
        except Exception as exc:
            log.error("fast_path_failed", message=repr(exc))
            keep = False
        if keep is None:
            handler._forwarding = handler._loop.create_task(
                handler._forward(self.message, self.plan, self))
            return
        handler._settled()
        handler._next(keep)

    def cancel(self) -> None:
        """The client went away: so does its upstream request."""
        self.sent.abort()
        self.handler._settled()


class FastPathHandler(LimitedHandler):
    """A LimitedHandler that gives the fast path the first look at each request."""

    __slots__ = ("_fast", "_forwarding", "pipes")

    def __init__(self, manager: web.Server, *, fast: FastPath, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._fast = fast
        # The forward in flight: carried by callbacks, or by a task.
        self._forwarding: _Callbacks | asyncio.Task[None] | None = None
        # A body piped from upstream pauses with this connection's writing.
        self.pipes = PipeSlot()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.pipes.pause()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.pipes.resume()

    def make_request(self, message: RawRequestMessage) -> web.BaseRequest:
        """The aiohttp Request the usual path would have made for `message`."""
        assert self._request_factory is not None
        return self._request_factory(message, EMPTY_PAYLOAD, self, StreamWriter(self, self._loop),
                                     self._task_handler)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if self._forwarding is None and (
                waiter is None or waiter.done() or self._messages or self._logging_enabled
                or self._upgraded or self._payload_parser is not None):
            super().data_received(data)
            return
        # aiohttp's loop is idle (or the fast path holds the connection): hold its
        # wake-up until the new requests have been looked at.
        self._waiter = None
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        if self._forwarding is None:
            self._take()

    def _take(self) -> None:
        """Answer queued requests from the front while the fast path can; then leave
        the rest, if any, to aiohttp's loop."""
        messages = self._messages
        fast = self._fast
        transport = self.transport
        peername = transport.get_extra_info("peername") if transport is not None else None
        tls = transport is not None and transport.get_extra_info("sslcontext") is not None
        while messages and not self._upgraded and not self._force_close and not self._close \
                and self.transport is not None:
            message, payload = messages[0]
            if (payload is not EMPTY_PAYLOAD or not isinstance(message, RawRequestMessage)
                    or message.version != HttpVersion11 or message.should_close):
                break
            action = fast.take(message, peername, tls)
            if action is None:
                break
            messages.popleft()
            # What aiohttp's loop does for every request it takes from the queue.
            if self._parser is not None:
                self._parser.message_consumed()
            if self._manager is not None:
                self._manager.requests_count += 1
            if type(action) is ForwardPlan:
                self._request_in_progress = True  # aiohttp's graceful shutdown waits
                self._forwarding = fast.begin(self, message, action) or \
                    self._loop.create_task(self._forward(message, action, None))
                if self._buffer_paused and len(messages) <= self._msg_queue_resume_size:
                    self._resume_reading_if_drained()
                return
            assert isinstance(action, Answer)
            self.transport.write(fast.rendered(action))
            if action.close:
                self.force_close()
                return
            self._idle_again()
        self._leave(messages)

    def _leave(self, messages: Any) -> None:
        """Hand what is left to aiohttp's loop, and read again if the queue was full
        (aiohttp's loop does that as it takes requests; here the fast path took them)."""
        waiter = self._waiter
        if messages and waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._buffer_paused and len(messages) <= self._msg_queue_resume_size:
            self._resume_reading_if_drained()

    async def _forward(self, message: RawRequestMessage, plan: ForwardPlan,
                       begun: _Callbacks | None) -> None:
        keep = False
        try:
            keep = await self._fast.forward(self, message, plan, begun)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("fast_path_failed", message=repr(exc))
        finally:
            self._settled()
        self._next(keep)

    def _settled(self) -> None:
        """The forward in flight is over: aiohttp's graceful shutdown may go on."""
        self._forwarding = None
        self._request_in_progress = False
        if self._handler_waiter is not None and not self._handler_waiter.done():
            self._handler_waiter.set_result(None)

    def _next(self, keep: bool) -> None:
        """After a forward's answer: the next request (`keep`), or the connection's end."""
        if not keep:
            self.force_close()
            return
        self._idle_again()
        self._take()

    def _process_keepalive(self) -> None:
        # Busy, not idle: aiohttp's keep-alive close must not fire during a forward. The
        # timer is left armed across requests (not cancelled and made again per request)
        # and, if it fires meanwhile, `_idle_again` arms it again once the answer is out.
        if self._forwarding is not None:
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    def _idle_again(self) -> None:
        """A request is answered: aiohttp's keep-alive clock starts again, as its own
        loop restarts it after each request."""
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def connection_lost(self, exc: BaseException | None) -> None:
        # The client went away: so does its upstream request.
        if self._forwarding is not None:
            self._forwarding.cancel()
        super().connection_lost(exc)


class FastPathSite(LimitedSite):
    """A LimitedSite whose connections are FastPathHandlers."""

    __slots__ = ("_fast",)

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, fast: FastPath,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._fast = fast

    def _protocol(self) -> LimitedHandler:
        server = self._runner.server
        assert server is not None
        return FastPathHandler(server, site=self, loop=self.loop, fast=self._fast,
                               **server._kwargs)
