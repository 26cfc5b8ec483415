"""Client limits aiohttp does not have: a request-head timeout, a body timeout, and a cap
on concurrent connections.

aiohttp closes an idle keep-alive connection (`keepalive_timeout`) but gives a client
that sends its request head one byte at a time, or stops in the middle of its body, all
the time it wants: a few hundred such clients hold a few hundred sockets for ever. Here:

- Head: a request head must be complete within `head_timeout_s` of its first byte (of
  the connection opening, for the first request). Past it, the client gets a 408 and the
  connection is closed; a connection that never sent a byte is closed without an answer
  (a browser's speculative preconnect, not an error worth an answer).
- Body: a request body may not stall for longer than `body_timeout_s`, and beyond that
  allowance it must average `body_min_rate` bytes per second (Apache's mod_reqtimeout
  rule), so that a body dripped a byte at a time is cut off too. Time during which the
  proxy itself stopped reading (the upstream is slow to take the body) does not count.
  The connection is aborted: the upstream sees a request that never finished, never a
  shortened one that looks complete.
- Connections: at `max_connections` open connections the listener stops accepting, so
  further clients wait in the kernel's backlog (as with HAProxy's `maxconn`) instead of
  costing memory here; it accepts again as soon as one closes. Connections accepted in
  the same burst as the one that reached the cap (asyncio accepts in batches) wait,
  unread, in a queue of at most `backlog` entries, and are served first; past that
  queue, which only a burst can fill, a connection gets a 503 and is closed.

The limits are enforced per connection in `LimitedHandler`, a `RequestHandler` subclass,
with one lazily re-armed timer per connection (no timer work per request). Events are
counted and logged at most every few seconds, so that a flood of slow clients never
turns into a flood of log lines; the same goes for malformed requests, which aiohttp
would otherwise log with a traceback each, outside the JSON log format.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from gateproxy.aio.needs import Need
from gateproxy.logs import log

REQUIRES: Final = (
    Need(web.RequestHandler, "__init__", param="loop"),
    Need(web.RequestHandler, "connection_made", call=True),
    Need(web.RequestHandler, "data_received", call=True),
    Need(web.RequestHandler, "connection_lost", call=True),
    Need(web.RequestHandler, "log_exception", call=True),
    Need(web.RequestHandler, "handle_error", param="exc"),
    Need(web.RequestHandler, "resume_reading", param="resume_parser"),
    Need(web.RequestHandler, "_resume_reading_for_buffer", call=True),
    Need(web.RequestHandler, "_loop"),
    Need(web.RequestHandler, "_messages"),
    Need(web.RequestHandler, "_upgraded"),
    Need(web.RequestHandler, "_payload_parser"),
    Need(web.RequestHandler, "_reading_paused"),
    Need(web.RequestHandler, "_buffer_paused"),
    Need(web.RequestHandler, "_request_count"),
    Need(web.RequestHandler, "_request_in_progress"),
    Need(web.RequestHandler, "_force_close"),
    Need(web.Server, "_kwargs"),
    Need(web.BaseSite, "_runner"),
    Need(web.BaseSite, "_server"),
    Need(web.BaseSite, "_backlog"),
)

BODY_MIN_RATE: Final = 500  # bytes per second, as Apache's mod_reqtimeout
LOG_EVERY_S: Final = 10.0
RETRY_ACCEPT_S: Final = 1.0

# Where a connection is; the last two read nothing.
_IDLE, _HEAD, _BODY, _CLOSING, _WAITING = 0, 1, 2, 3, 4
LINGER_S: Final = 2.0


class _Tally:
    """Counts limit events and logs them at most every LOG_EVERY_S seconds."""

    def __init__(self, site: LimitedSite) -> None:
        self._site = site
        self._loop = site.loop
        self.pending: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self._handle: asyncio.TimerHandle | None = None
        self._last = -LOG_EVERY_S

    def add(self, kind: str) -> None:
        self.pending[kind] += 1
        self.totals[kind] += 1
        if self._handle is None:
            delay = max(0.0, self._last + LOG_EVERY_S - self._loop.time())
            self._handle = self._loop.call_later(delay, self.flush)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self.pending:
            return
        self._last = self._loop.time()
        counts = dict(self.pending)
        self.pending.clear()
        # Closing connections that never sent a byte is routine; the rest is worth a look.
        level = "DEBUG" if set(counts) == {"idleClosed"} else "WARNING"
        site = self._site
        log.log(level, "client_limits", listener=site.name, **counts,
                openConnections=site.open, maxConnections=site.max_connections,
                accepting=not site.paused)


class LimitedHandler(web.RequestHandler):
    """aiohttp's RequestHandler with the head and body timeouts and the connection count.

    A connection is served (aiohttp's machinery started) only once it has a place under
    `max_connections`; until then it waits, its socket unread, in the site's queue.
    """

    __slots__ = ("_body", "_body_bytes", "_body_start", "_deadline", "_head_bytes", "_held",
                 "_phase", "_served", "_site", "_timer", "_wire")

    def __init__(self, manager: web.Server, *, site: LimitedSite, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._site = site
        self._phase = _IDLE
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._head_bytes = False
        self._body: StreamReader | None = None
        self._body_start = 0.0
        self._body_bytes = 0
        self._served = False
        self._wire: asyncio.Transport | None = None
        self._held = b""

    # --- connection count ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not derive from asyncio's classes.
        self._wire = cast(asyncio.Transport, transport)
        transport = self._wire
        site = self._site
        if site.admit():
            self._serve()
        elif site.park(self):
            # Accepted in the same burst as the connection that reached the cap: it
            # waits here, unread, as the others wait in the kernel's backlog.
            self._phase = _WAITING
            transport.pause_reading()
        else:
            self._linger(site.answers.refusal)

    def _serve(self) -> None:
        assert self._wire is not None
        self._served = True
        super().connection_made(self._wire)
        self._start_head(self._loop.time())

    def unpark(self) -> bool:
        """Serve a waiting connection now; False if it has gone meanwhile."""
        wire = self._wire
        if wire is None or wire.is_closing():
            return False
        self._serve()
        held, self._held = self._held, b""
        if held:
            self.data_received(held)
        wire.resume_reading()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._phase == _WAITING:
            self._site.forget(self)
        self._phase = _IDLE
        self._body = None
        self._wire = None
        if self._served:
            self._site.release()
            super().connection_lost(exc)

    def _linger(self, answer: bytes) -> None:
        """Send a last answer, then let the client read it: its unread request bytes
        would otherwise make the kernel reset the connection and drop the answer with
        it. Input is discarded until the client closes, or LINGER_S at most."""
        wire = self._wire
        if wire is None or wire.is_closing():
            return
        self._phase = _CLOSING
        wire.write(answer)
        if wire.can_write_eof():
            wire.write_eof()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(LINGER_S, self._end_linger)

    def _end_linger(self) -> None:
        self._timer = None
        if self._served:
            self.force_close()
        elif self._wire is not None:
            self._wire.close()

    # --- head and body timeouts ------------------------------------------------------

    def _start_head(self, now: float) -> None:
        self._phase = _HEAD
        self._head_bytes = False
        self._deadline = now + self._site.head_timeout_s
        self._arm()

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check)

    def data_received(self, data: bytes) -> None:
        if self._phase >= _CLOSING:
            if self._phase == _WAITING and data:
                # Some loops (uvloop) start reading after connection_made whatever it
                # asked: keep what came, for when the connection is served.
                self._held += data
                if self._wire is not None:
                    self._wire.pause_reading()
            return  # after a last answer, or before being served: nothing is parsed
        if self._upgraded or self._payload_parser is not None:
            # A WebSocket (or other upgraded) stream: its own protocol keeps it alive.
            self._phase = _IDLE
            super().data_received(data)
            return
        if not data:  # aiohttp re-feeds buffered data after a pause with b""
            super().data_received(data)
            return
        phase = self._phase
        if phase == _BODY and self._body is not None and self._body.is_eof():
            phase = self._phase = _IDLE
        if phase == _IDLE:
            self._start_head(self._loop.time())
            phase = _HEAD
        if phase == _HEAD:
            self._head_bytes = True
        else:
            self._body_bytes += len(data)
            self._body_moved()
        before = self._request_count
        super().data_received(data)
        if (phase == _BODY and self._request_count != before and self._body is not None
                and not self._body.is_eof()):
            # A "message" before the body ended can only be aiohttp's parser giving up on
            # the body (a bad chunk): the request being forwarded can never be completed.
            # Ending the connection cancels it upstream; a 400 queued after it would be a
            # second answer to one request.
            self._site.tally.add("badRequests")
            self._abort()
            return
        if self._request_count != before and self._messages:
            # One or more heads are complete; the last one may start a body.
            payload = self._messages[-1][1]
            if isinstance(payload, StreamReader) and not payload.is_eof():
                self._phase = _BODY
                self._body = payload
                self._body_start = self._loop.time()
                self._body_bytes = 0
                self._deadline = self._body_start + self._site.body_timeout_s
                self._arm()
            elif payload is EMPTY_PAYLOAD and not data.endswith(b"\r\n\r\n"):
                # The start of the next head came with this one (pipelining) and stays in
                # the parser: time it from now, or nothing would (nothing more may come).
                self._body = None
                self._start_head(self._loop.time())
                self._head_bytes = True
            else:
                self._phase = _IDLE
                self._body = None

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The proxy's own JSON error for a request aiohttp could not parse or serve,
        instead of aiohttp's text page, which echoes the offending bytes and names
        aiohttp and Python."""
        super().handle_error(request, status, exc, message)  # its logging, and checks
        answers = self._site.answers
        return answers.malformed() if status == 400 else answers.failed()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            # A malformed request: the client got its 400; one traceback per bad request
            # would let anyone write to our logs at will.
            self._site.tally.add("badRequests")
            return
        message = args[0] % args[1:] if args and isinstance(args[0], str) else "error"
        log.opt(exception=exc if isinstance(exc, BaseException) else True).error(
            "request_error", message=message)

    def _body_moved(self) -> None:
        """Bytes of the body arrived: the deadline is the sooner of `body_timeout_s` of
        silence and the allowance plus what has come in at the minimum rate."""
        site = self._site
        now = self._loop.time()
        self._deadline = min(now + site.body_timeout_s,
                             self._body_start + site.body_timeout_s
                             + self._body_bytes / site.body_min_rate)

    def resume_reading(self, resume_parser: bool = True) -> None:
        # The proxy held the client back; that time is not the client's to account for.
        # (aiohttp calls this after every read of the body, paused or not.)
        if self._reading_paused:
            self._forgive()
        super().resume_reading(resume_parser)

    def _resume_reading_for_buffer(self) -> None:
        if self._buffer_paused:
            self._forgive()
        super()._resume_reading_for_buffer()

    def _forgive(self) -> None:
        if self._phase in (_HEAD, _BODY):
            site = self._site
            allowance = site.head_timeout_s if self._phase == _HEAD else site.body_timeout_s
            now = self._loop.time()
            self._deadline = max(self._deadline, now + allowance)
            if self._phase == _BODY:
                # Restart the rate accounting from here, as if the body began now.
                self._body_start = now
                self._body_bytes = 0

    def _check(self) -> None:
        self._timer = None
        if self.transport is None or self._force_close:
            return
        phase = self._phase
        if phase == _BODY and (self._body is None or self._body.is_eof()):
            self._phase = phase = _IDLE
        if phase in (_IDLE, _CLOSING, _WAITING) or self._upgraded or (
                self._payload_parser is not None):
            return
        now = self._loop.time()
        if self._reading_paused or self._buffer_paused or (phase == _HEAD and (
                self._request_in_progress or self._messages)):
            # The proxy is holding the client back, or (a head pipelined behind requests
            # still being answered) the client has no reason to hurry: the clock starts
            # again when that is over. A 408 now would also land inside another answer.
            self._forgive()
        if now < self._deadline:
            self._arm()
            return
        site = self._site
        if phase == _HEAD:
            if self._head_bytes:
                site.tally.add("headTimeouts")
                self._linger(site.answers.head_timeout)
            else:
                site.tally.add("idleClosed")
                self.force_close()
        else:
            site.tally.add("bodyTimeouts")
            self._abort()

    def _abort(self) -> None:
        """End the connection now: nothing more is read or written, and an unclean end is
        the only honest signal once the request has started upstream."""
        transport = self.transport
        self.force_close()
        if transport is not None:
            transport.abort()


class _Listener(asyncio.AbstractServer):
    """The listening sockets of one site, and the asyncio servers accepting on them.

    Pausing closes the accepting servers but not the sockets (they are duplicates), so
    the kernel keeps completing handshakes into the backlog; resuming serves the same
    sockets again. `sockets` always answers, so the runner's addresses stay known.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, listening: list[socket.socket],
                 serving: list[asyncio.AbstractServer]) -> None:
        self._loop = loop
        self.listening = listening
        self.serving = serving
        self.closed = False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def start_serving(self) -> None:
        raise NotImplementedError("LimitedSite decides when to accept")

    async def serve_forever(self) -> None:
        raise NotImplementedError("LimitedSite decides when to accept")

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self.listening)

    def pause(self) -> None:
        servers, self.serving = self.serving, []
        for server in servers:
            server.close()

    def close(self) -> None:
        self.closed = True
        self.pause()
        for sock in self.listening:
            sock.close()

    def is_serving(self) -> bool:
        return bool(self.serving)

    async def wait_closed(self) -> None:
        for server in list(self.serving):
            await server.wait_closed()


@dataclass(frozen=True, slots=True)
class SiteAnswers:
    """The proxy's own answers a site gives where no request could be served: as bytes
    when none could be parsed (a head too slow, a connection over the cap), as responses
    when aiohttp could not parse or serve one."""

    head_timeout: bytes
    refusal: bytes
    malformed: Callable[[], web.StreamResponse]
    failed: Callable[[], web.StreamResponse]


class LimitedSite(web.BaseSite):
    """A TCP site whose connections are `LimitedHandler`s, capped at `max_connections`."""

    __slots__ = ("_host", "_listener", "_port", "_resuming", "_reuse_port", "_update_pending",
                 "answers", "body_min_rate", "body_timeout_s", "head_timeout_s", "loop",
                 "max_connections", "open", "tally", "waiting")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 answers: SiteAnswers, max_connections: int, head_timeout_s: float,
                 body_timeout_s: float, body_min_rate: float = BODY_MIN_RATE,
                 backlog: int = 1024, reuse_port: bool = False) -> None:
        super().__init__(runner, backlog=backlog)
        self._reuse_port = reuse_port  # several worker processes share the port
        self._host = host
        self._port = port
        self.max_connections = max_connections
        self.head_timeout_s = head_timeout_s
        self.body_timeout_s = body_timeout_s
        self.body_min_rate = body_min_rate
        self.open = 0
        self.waiting: deque[LimitedHandler] = deque()
        self.loop = asyncio.get_running_loop()
        self._listener: _Listener | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._update_pending = False
        self.tally = _Tally(self)
        self.answers = answers

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def paused(self) -> bool:
        return self._listener is not None and not self._listener.serving

    def _protocol(self) -> LimitedHandler:
        server = self._runner.server
        assert server is not None
        # The same keyword arguments aiohttp's own Server.__call__ passes (handler_args,
        # access log settings), so nothing configured on the app is lost.
        return LimitedHandler(server, site=self, loop=self.loop, **server._kwargs)

    async def start(self) -> None:
        await super().start()
        # asyncio resolves and binds the host exactly as TCPSite would; duplicates of its
        # sockets are what stays open while the accepting servers come and go.
        first = await self.loop.create_server(self._protocol, self._host, self._port,
                                               backlog=self._backlog,
                                               reuse_port=self._reuse_port or None)
        listening = [socket.socket(fileno=os.dup(s.fileno())) for s in first.sockets]
        self._listener = _Listener(self.loop, listening, [first])
        self._server = self._listener
        self._port = int(listening[0].getsockname()[1])

    async def stop(self) -> None:
        if self._resuming is not None:
            self._resuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resuming
        self.tally.flush()
        await super().stop()
        # Never served, so aiohttp's shutdown does not know them.
        while self.waiting:
            handler = self.waiting.popleft()
            if handler._wire is not None:
                handler._wire.close()

    # --- the connection count --------------------------------------------------------

    def admit(self) -> bool:
        """A place for a new connection, unless the cap is reached or others wait."""
        if self.open >= self.max_connections or self.waiting:
            return False
        self.open += 1
        if self.open >= self.max_connections:
            self._schedule_update()
        return True

    def park(self, handler: LimitedHandler) -> bool:
        """Queue a connection accepted past the cap; False (refuse it) if the queue, which
        only a burst of accepts can fill, is full."""
        if len(self.waiting) >= self._backlog:
            self.tally.add("refused")
            return False
        self.waiting.append(handler)
        self._schedule_update()
        return True

    def forget(self, handler: LimitedHandler) -> None:
        with contextlib.suppress(ValueError):
            self.waiting.remove(handler)

    def release(self) -> None:
        """A served connection ended: its place goes to the longest waiting one."""
        self.open -= 1
        while self.waiting and self.open < self.max_connections:
            handler = self.waiting.popleft()
            self.open += 1
            if not handler.unpark():
                self.open -= 1
        if self.paused:
            self._schedule_update()

    def _schedule_update(self) -> None:
        # Deferred a loop turn: asyncio may be creating transports for connections it
        # accepted in the same burst, and they must find their server still open.
        if not self._update_pending:
            self._update_pending = True
            self.loop.call_soon(self._update)

    def _update(self) -> None:
        self._update_pending = False
        listener = self._listener
        if listener is None or listener.closed:
            return
        if self.open >= self.max_connections or self.waiting:
            if listener.serving:
                listener.pause()
                self.tally.add("limitReached")
        elif not listener.serving and self._resuming is None:
            self._resuming = self.loop.create_task(self._resume(listener))

    async def _resume(self, listener: _Listener) -> None:
        servers: list[asyncio.AbstractServer] = []
        try:
            for sock in listener.listening:
                servers.append(await self.loop.create_server(
                    self._protocol, sock=sock.dup(), backlog=self._backlog))
        except OSError as exc:
            # Out of descriptors, most likely: try again shortly, never stay deaf.
            log.error("accept_resume_failed", listener=self.name, message=str(exc))
            for server in servers:
                server.close()
            self._resuming = None
            self.loop.call_later(RETRY_ACCEPT_S, self._schedule_update)
            return
        self._resuming = None
        if listener.closed:
            for server in servers:
                server.close()
            return
        listener.serving = servers
        self._schedule_update()  # it may have filled up again meanwhile
