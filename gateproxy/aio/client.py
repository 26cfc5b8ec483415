"""A lean keep-alive HTTP/1.1 client for the one upstream (`fast_path: true`, the default).

aiohttp's ClientSession is general-purpose: per request it builds a ClientRequest and
yarl URLs, looks up a connector key, runs tracing hooks, timers and header defaults.
For a proxy that sends every request to one origin, that costs more than the forwarding
itself (the profile in docs/performance.md). This client keeps the parts of aiohttp that
matter for correctness, its client protocol `ResponseHandler` with the llhttp-based C
response parser (the same ones ClientSession uses underneath: read timeouts, flow
control, HEAD, 1xx, 204/304, chunked, Content-Length and close-delimited bodies), and
replaces the rest with:

- a LIFO pool of idle connections (the hottest are reused, the rest expire);
- a request head serialised with one join and written together with the body when the
  body has already arrived (the usual small JSON request), so one send per request;
- one retry on a fresh connection when a pooled connection turns out to be closed
  before any answer, only for requests that are safe to repeat (idempotent, no body);
- `begin`, a bodiless GET written on an idle pooled connection without a task: its
  answer is awaited by callbacks (`Sent`), and when it is not a whole small one the
  task path takes the half-done exchange over (`Sent.finish`);
- `whole_body` for a small answer that came in one piece with its head, and `pipe_body`,
  which hands the rest of a Content-Length body from the upstream socket straight to
  the client's transport (the fast path in gateproxy/aio/fastpath.py uses both).

What goes wrong becomes an UpstreamError through the same map as aiohttp's client
(`failure` in gateproxy/upstream/interface.py). WebSocket handshakes go to the client it
is given for them (the gateway gives it an AiohttpUpstream).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import HttpProcessingError, RawResponseMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDict
from yarl import URL

from gateproxy.aio.needs import Need
from gateproxy.http_rules.actions import (
    FAILURES,
    UNAVAILABLE,
    ConnectStep,
    UpstreamError,
    UpstreamWebSocket,
    WebSocketUpstream,
    failure,
)

REQUIRES: Final = (
    Need(ResponseHandler, "__init__", param="loop"),
    Need(ResponseHandler, "data_received", call=True),
    Need(ResponseHandler, "connection_lost", call=True),
    Need(ResponseHandler, "_on_read_timeout", call=True),
    Need(ResponseHandler, "_reschedule_timeout", call=True),
    Need(ResponseHandler, "_drop_timeout", call=True),
    Need(ResponseHandler, "_read_timeout"),
    Need(ResponseHandler, "_drain_helper", call=True),
    Need(ResponseHandler, "_reading_paused"),
    Need(ResponseHandler, "set_response_params", param="read_bufsize"),
    Need(ResponseHandler, "start_timeout", call=True),
    Need(ResponseHandler, "read", call=True),
    Need(ResponseHandler, "resume_reading", param="resume_parser"),
    Need(ResponseHandler, "writing_paused"),
    # Public-looking but undocumented: a rename would break requests, not the start.
    Need(ResponseHandler, "should_close"),
    Need(ResponseHandler, "set_exception", call=True),
    Need(aiohttp.StreamReader, "total_bytes"),
    # The parsed answers' queue, read without a task by `Sent.poll`.
    Need(ResponseHandler, "_buffer"),
)

# RFC 9110 section 9.2.2: a request with one of these methods may be repeated.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODYLESS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Idle pooled connections are closed after this long: under Node's default
# keepAliveTimeout (5 s), so that usually the proxy, not the upstream, closes first.
POOL_IDLE_S: Final = 4.0
MAX_IDLE: Final = 256
# Response bytes buffered per request before reading from the upstream pauses (aiohttp
# pauses at twice this): enough for a few socket reads, little for many downloads.
READ_BUFSIZE: Final = 1 << 16
# aiohttp's ClientSession meets an answer that is not HTTP as a ClientResponseError;
# this client, on aiohttp's parser without the ClientResponse around it, meets it raw.
_FAILURES: Final = (*FAILURES, HttpProcessingError)


class _Protocol(ResponseHandler):
    """aiohttp's client protocol, able to hand the rest of a body straight to another
    transport (`FastResponse.pipe_body`) instead of parsing and queueing it, and with a
    read timeout that costs a clock read per event instead of a new timer: aiohttp
    cancels and schedules a timer when a request is sent and again when bytes arrive.
    Here one timer per connection checks a deadline when it fires, and re-arms itself
    only if the deadline moved meanwhile."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        # Kept, because asyncio.get_running_loop() costs a getpid() system call per use
        # (CPython 3.11 checks for a fork), which the profile showed twice per request.
        self.loop = loop
        self.pipe: _Pipe | None = None
        # Called on every event of an exchange awaited without a task (`Sent`): bytes
        # parsed, the connection lost, the read timeout.
        self.listener: Callable[[], None] | None = None
        # The response parser can take the next answer on this connection: whether it
        # skips bodies (HEAD), or None when the next request needs a new parser.
        self.parser_skips: bool | None = None
        self._deadline: float | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None

    def _reschedule_timeout(self) -> None:
        timeout = self._read_timeout
        if not timeout:
            self._deadline = None
            return
        deadline = self._deadline = self.loop.time() + timeout
        if self._deadline_timer is None:
            self._deadline_timer = self.loop.call_at(deadline, self._check_deadline)

    def _drop_timeout(self) -> None:
        self._deadline = None  # the timer, if any, finds no deadline and lapses

    def _check_deadline(self) -> None:
        self._deadline_timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:
            self._deadline_timer = self.loop.call_at(deadline, self._check_deadline)
            return
        self._deadline = None
        self._on_read_timeout()

    def data_received(self, data: bytes) -> None:
        pipe = self.pipe
        if pipe is None or not data:
            super().data_received(data)
            self._notify()
            return
        self._reschedule_timeout()
        pipe.feed(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self.pipe is not None:
            self.pipe.finish(False)
        super().connection_lost(exc)
        self._notify()

    def _on_read_timeout(self) -> None:
        if self.pipe is not None:
            self.pipe.finish(False)
            self.abort()
            return
        super()._on_read_timeout()
        self._notify()

    def _notify(self) -> None:
        # Last, once aiohttp's protocol has done its own bookkeeping: the listener may
        # release this connection and send the next request on it.
        listener = self.listener
        if listener is not None:
            listener()


class _Pipe:
    """The rest of a Content-Length body, from an upstream connection to a client's
    transport as it arrives: no parsing, no queue, no task switch per piece. The client
    transport's flow control pauses the upstream (`pause`, `resume`)."""

    __slots__ = ("_payload", "_proto", "_remaining", "_sink", "done")

    def __init__(self, proto: _Protocol, payload: StreamReader, sink: asyncio.Transport,
                 remaining: int) -> None:
        self._proto = proto
        self._payload = payload
        self._sink = sink
        self._remaining = remaining
        self.done: asyncio.Future[bool] = proto.loop.create_future()

    def feed(self, data: bytes) -> None:
        sink = self._sink
        if sink.is_closing():
            self.finish(False)
            return
        remaining = self._remaining
        if len(data) > remaining:
            # Bytes past the body: not HTTP any more; the connection is not reused.
            self._proto.force_close()
            data = data[:remaining]
        sink.write(data)
        self._remaining = remaining - len(data)
        if not self._remaining:
            self.finish(True)

    def pause(self) -> None:
        self._proto.pause_reading()

    def resume(self) -> None:
        if self._proto._reading_paused:
            self._proto.resume_reading(resume_parser=False)

    def finish(self, complete: bool) -> None:
        """End the pipe; `complete`: the whole body went through."""
        proto = self._proto
        if proto.pipe is not self:
            return
        proto.pipe = None
        if proto._reading_paused:
            proto.resume_reading(resume_parser=False)
        if complete:
            # The parser never saw these bytes: the answer is complete all the same, and
            # the next request gets a parser of its own.
            self._payload.feed_eof()
        if not self.done.done():
            self.done.set_result(complete)


class PipeSlot:
    """The sink's flow control, kept by whoever sees it (the client connection's
    protocol), and the pipe of a running `pipe_body` that follows it."""

    __slots__ = ("paused", "pipe")

    def __init__(self) -> None:
        self.paused = False
        self.pipe: _Pipe | None = None

    def pause(self) -> None:
        self.paused = True
        if self.pipe is not None:
            self.pipe.pause()

    def resume(self) -> None:
        self.paused = False
        if self.pipe is not None:
            self.pipe.resume()


class _Stale(Exception):
    """The connection closed before answering a request that had no body: on a pooled
    connection, most likely the upstream closed it as idle just as it was reused."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class FastResponse:
    """One upstream response; its connection goes back to the pool when the body has
    been read to the end."""

    __slots__ = ("_body_task", "_client", "_done", "_length", "_payload", "_proto",
                 "raw_headers", "reason", "status")

    def __init__(self, client: FastUpstream, proto: _Protocol, message: RawResponseMessage,
                 payload: StreamReader, body_task: asyncio.Task[bool] | None) -> None:
        self._client = client
        self._proto = proto
        self._payload = payload
        self._body_task = body_task
        self._done = False
        # The body's length when a Content-Length delimits it (not chunked, not the
        # connection's end): aiohttp's parser has checked it is a number.
        length = None if message.chunked else message.headers.get("Content-Length")
        self._length = None if length is None else int(length)
        self.status = message.code
        self.reason = message.reason
        self.raw_headers = message.raw_headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        payload = self._payload
        try:
            while chunk := await payload.readany():
                yield chunk
        except _FAILURES as exc:
            self.close()
            raise failure(exc, self._client._read_timeout_ms, mid_body=True) from exc
        self.release()

    @property
    def arrived(self) -> bool:
        """Whether the whole body, delimited by a Content-Length, has arrived and none
        of it has been read (a small answer usually comes in one piece with its head)."""
        return self.pipeable and self._payload.is_eof()

    def whole_body(self) -> bytes | None:
        """The whole body, when it has `arrived`; the connection then goes back to the
        pool. None otherwise: iterate instead."""
        if not self.arrived:
            return None
        body = self._payload.read_nowait(-1)
        self.release()
        return body

    @property
    def pipeable(self) -> bool:
        """Whether `pipe_body` can take the body: delimited by a Content-Length and none
        of it read yet."""
        return not self._done and self._length is not None and self._body_task is None \
            and self._payload.exception() is None

    async def pipe_body(self, sink: asyncio.Transport, pipes: PipeSlot) -> bool:
        """Send the body, delimited by a Content-Length, to `sink` as it arrives, past
        the parser and without a task switch per piece (large downloads). `pipes`
        gets the pipe while it runs, for the sink's flow control to pause and resume.
        True when the whole body went through (the connection is then pooled); False
        when the upstream broke off or stalled, or the sink closed."""
        payload = self._payload
        proto = self._proto
        length = self._length
        if not self.pipeable or length is None:
            raise ValueError("only a fresh Content-Length body can be piped")
        # What the parser has already queued goes first, and what it holds back while
        # its queue is over the high-water mark (reading the queue empty resumes it,
        # which queues the rest). From here on the parser is left behind (each request
        # gets a new one).
        while True:
            buffered = payload.read_nowait(-1)
            if buffered:
                sink.write(buffered)
            elif proto._reading_paused:
                proto.resume_reading()
            else:
                break
        remaining = length - payload.total_bytes
        if remaining > 0 and not payload.is_eof():
            # The parser never sees the rest of this body: the next answer needs a new one.
            proto.parser_skips = None
            pipe = proto.pipe = _Pipe(proto, payload, sink, remaining)
            pipes.pipe = pipe
            if pipes.paused:
                pipe.pause()
            try:
                complete = await pipe.done
            finally:
                pipe.finish(False)
                pipes.pipe = None
            if not complete:
                self.close()
                return False
        self.release()
        return True

    def release(self) -> None:
        if self._done:
            return
        if not self._payload.is_eof():
            self.close()
            return
        self._done = True
        task = self._body_task
        if task is not None and not (task.done() and not task.cancelled() and task.result()):
            # The upstream answered before it had the whole request body: what it has
            # not read yet would be taken for the next request.
            task.cancel()
            self._proto.abort()
            return
        self._client._release(self._proto)

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        if self._body_task is not None:
            self._body_task.cancel()
        self._proto.abort()


class Sent:
    """A bodiless GET written on a pooled connection, its answer awaited without a task:
    the connection's protocol calls the listener (`listen`) on each event until `poll`
    says the exchange has moved on. A whole small answer is then answered from that
    callback; anything else is finished on the task path (`finish`), with the existing
    code: the read of the head, the error map, the retry of a stale connection."""

    __slots__ = ("_client", "_head", "_proto", "response")

    def __init__(self, client: FastUpstream, proto: _Protocol, head: bytes) -> None:
        self._client = client
        self._proto = proto
        self._head = head
        self.response: FastResponse | None = None

    def listen(self, listener: Callable[[], None]) -> None:
        self._proto.listener = listener

    def write(self) -> None:
        """Send the request, unless its connection has ended meanwhile (the client went
        away, or the upstream closed it: `poll` then says so)."""
        proto = self._proto
        if proto.transport is not None:
            self._client._write(proto, "GET", self._head, None, False)

    def poll(self) -> bool:
        """Whether the exchange has moved on: the final answer's head has arrived (taken
        off the connection's queue as `response`), or it failed (`finish` says how).
        From then on the connection no longer calls the listener."""
        proto = self._proto
        queue = proto._buffer
        while queue:
            (message, payload), _ = queue.popleft()
            if _final(message):
                self.response = FastResponse(self._client, proto, message, payload, None)
                break
        else:
            if proto.exception() is None:
                return False
        proto.listener = None
        return True

    async def finish(self) -> FastResponse:
        """The answer's head on the task path, as `FastUpstream.send` gives it."""
        self._proto.listener = None
        if self.response is not None:
            return self.response
        return await self._client._finish(self._proto, self._head)

    def abort(self) -> None:
        """The client went away: the exchange is unfinished, the connection dropped."""
        self._proto.listener = None
        self._proto.abort()


class FastUpstream:
    """Keep-alive HTTP/1.1 to one upstream origin; adds no headers of its own except a
    `Host` when the client sent none, never decompresses, never follows redirects."""

    def __init__(self, base_url: str, connect_timeout_ms: int, read_timeout_ms: int, *,
                 websockets: WebSocketUpstream, connects: ConnectStep) -> None:
        """`websockets`: the client WebSocket handshakes go to (closed with this one);
        `connects`: the connect step every new connection goes through."""
        url = URL(base_url)
        self._host = url.raw_host or "127.0.0.1"
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if url.scheme == "https" else None)
        self._authority = url.host_port_subcomponent or self._host
        # A base URL with a path prefixes every target, as AiohttpUpstream does.
        self._prefix = url.raw_path.rstrip("/")
        self._connect_timeout_ms = connect_timeout_ms
        self._read_timeout_ms = read_timeout_ms
        self._read_timeout = read_timeout_ms / 1000 if read_timeout_ms else None
        self._idle: deque[tuple[_Protocol, float]] = deque()
        self._closed = False
        self._websockets = websockets
        self._connects = connects

    # --- requests ---------------------------------------------------------------------

    async def send(self, method: str, target: str, headers: CIMultiDict[str],
                   body: aiohttp.StreamReader | None) -> FastResponse:
        if self._closed:
            raise UpstreamError(UNAVAILABLE, "the proxy is shutting down")
        chunked = body is not None and "Content-Length" not in headers
        head = self._head(method, target, headers, body is not None, chunked)
        proto, reused = await self._acquire()
        try:
            return await self._exchange(proto, method, head, body, chunked)
        except _Stale as stale:
            if not (reused and method in IDEMPOTENT):
                raise failure(stale.cause, self._read_timeout_ms) from stale.cause
        return await self._retry(method, head, body, chunked)

    async def _retry(self, method: str, head: bytes, body: aiohttp.StreamReader | None,
                     chunked: bool) -> FastResponse:
        """The one retry on a fresh connection, after a pooled one closed unanswered."""
        proto = await self._connect()
        try:
            return await self._exchange(proto, method, head, body, chunked)
        except _Stale as stale:
            raise failure(stale.cause, self._read_timeout_ms) from stale.cause

    def begin(self, target: str, headers: CIMultiDict[str]) -> Sent | None:
        """Write a bodiless GET on an idle pooled connection and return at once: its
        answer is awaited by callbacks (`Sent`). None when there is no idle connection
        (a connect is needed) or the head is refused: `send` then does all of it, and
        meets the same refusal."""
        if self._closed:
            return None
        try:
            head = self._head("GET", target, headers, False, False)
        except UpstreamError:
            return None
        proto = self._pooled()
        if proto is None:
            return None
        sent = Sent(self, proto, head)
        # Written from the loop's ready queue, after this turn's other callbacks: a burst
        # of requests then reaches the upstream together, and wakes it once rather than
        # once each (written at once, measured: about 10 us more CPU per request at 64
        # connections, in wake-ups charged to the writes).
        proto.loop.call_soon(sent.write)
        return sent

    async def _finish(self, proto: _Protocol, head: bytes) -> FastResponse:
        """The rest of `send` for a GET `begin` wrote on a pooled connection."""
        try:
            return await self._reply(proto, True, None)
        except _Stale:
            return await self._retry("GET", head, None, False)

    def _head(self, method: str, target: str, headers: CIMultiDict[str],
              body: bool, chunked: bool) -> bytes:
        # The same request head as the aiohttp client sends, so that switching clients
        # changes nothing the upstream sees: an empty query dropped (yarl cannot
        # represent one), a missing Host first, `Content-Length: 0` on a bodiless
        # request whose method gives a body meaning (RFC 9110 section 8.6; some
        # servers answer 411 without it).
        if target.endswith("?") and target.count("?") == 1:
            target = target[:-1]
        lines = [f"{method} {self._prefix}{target} HTTP/1.1"]
        if "Host" not in headers:
            lines.append(f"Host: {self._authority}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif not body and method not in _BODYLESS and "Content-Length" not in headers:
            lines.append("Content-Length: 0")
        text = "\r\n".join(lines) + "\r\n\r\n"
        # A CR or LF inside a name, value or target would split the head: request
        # smuggling. aiohttp's parser rejects them from clients; this holds for every
        # header, the proxy's own included.
        if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
            raise UpstreamError(UNAVAILABLE, "a request header contains a line break")
        # UTF-8, as aiohttp's client: header bytes that are not UTF-8 reach the upstream
        # as their Latin-1 reading (docs/headers.md).
        return text.encode("utf-8")

    async def _exchange(self, proto: _Protocol, method: str, head: bytes,
                        body: aiohttp.StreamReader | None, chunked: bool) -> FastResponse:
        body_task = self._write(proto, method, head, body, chunked)
        return await self._reply(proto, body is None, body_task)

    def _write(self, proto: _Protocol, method: str, head: bytes,
               body: aiohttp.StreamReader | None, chunked: bool) -> asyncio.Task[bool] | None:
        """Send the request (the head and a body already here in one write); the task
        that streams a body still arriving."""
        skip = method == "HEAD"
        if proto.parser_skips is not skip:
            # A parser that has read a whole answer is ready for the next one (aiohttp's
            # server keeps one per connection); a new one per request was a cost.
            proto.set_response_params(skip_payload=skip, read_until_eof=True,
                                      auto_decompress=False, read_timeout=self._read_timeout,
                                      read_bufsize=READ_BUFSIZE)
            proto.parser_skips = skip
        transport = proto.transport
        if transport is None:
            raise _Stale(aiohttp.ServerDisconnectedError())
        if body is None:
            transport.write(head)
        elif body.is_eof() and body.exception() is None:
            # The whole body is already here: head and body in one write.
            data = body.read_nowait(-1)
            if chunked:
                framed = [head, b"%x\r\n" % len(data), data, b"\r\n0\r\n\r\n"] if data \
                    else [head, b"0\r\n\r\n"]
                transport.writelines(framed)
            else:
                transport.writelines([head, data])
        else:
            transport.write(head)
            return proto.loop.create_task(_send_body(proto, body, chunked))
        proto.start_timeout()
        return None

    async def _reply(self, proto: _Protocol, bodiless: bool,
                     body_task: asyncio.Task[bool] | None) -> FastResponse:
        """The final answer's head to a request written on `proto`."""
        try:
            message, payload = await _read_head(proto)
        except BaseException as exc:
            # Failed or cancelled (the client went away, a caller's timeout): the exchange
            # is unfinished, so the connection cannot be reused.
            _cancel(body_task)
            proto.abort()
            if bodiless and isinstance(exc, aiohttp.ServerDisconnectedError
                                       | aiohttp.ClientOSError):
                raise _Stale(exc) from exc
            if isinstance(exc, _FAILURES):
                raise failure(exc, self._read_timeout_ms) from exc
            raise
        return FastResponse(self, proto, message, payload, body_task)

    # --- the pool ---------------------------------------------------------------------

    async def _acquire(self) -> tuple[_Protocol, bool]:
        proto = self._pooled()
        if proto is not None:
            return proto, True
        return await self._connect(), False

    def _pooled(self) -> _Protocol | None:
        """The most recently used idle connection still fit for a request; the unfit
        ones met on the way are closed."""
        idle = self._idle
        if idle:
            now = idle[-1][0].loop.time()
            while idle:
                proto, since = idle.pop()
                if now - since < POOL_IDLE_S and proto.is_connected() \
                        and not proto.should_close:
                    return proto
                proto.close()
        return None

    def _release(self, proto: _Protocol) -> None:
        if self._closed or proto.should_close or not proto.is_connected() \
                or len(self._idle) >= MAX_IDLE:
            proto.close()
            return
        now = proto.loop.time()
        idle = self._idle
        idle.append((proto, now))
        # The stack's bottom holds the connections least recently used: expire them
        # here, one per release, instead of keeping a timer.
        if now - idle[0][1] >= POOL_IDLE_S:
            idle.popleft()[0].close()

    async def _connect(self) -> _Protocol:
        try:
            return await self._connects.connect(self._open)
        except TimeoutError as exc:
            # What aiohttp's client raises when its connect timeout runs out: the map
            # tells it from a read timeout.
            timeout = aiohttp.ConnectionTimeoutError(f"connection timeout to {self._authority}")
            raise failure(timeout, self._read_timeout_ms) from exc
        except OSError as exc:
            raise failure(exc, self._read_timeout_ms) from exc

    async def _open(self) -> _Protocol:
        """One connection attempt; nothing is sent on it yet."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout_ms / 1000):
            _, proto = await loop.create_connection(
                lambda: _Protocol(loop), self._host, self._port, ssl=self._ssl)
        return proto

    # --- WebSockets and closing -------------------------------------------------------

    async def open_websocket(self, target: str, headers: CIMultiDict[str],
                             protocols: tuple[str, ...], compress: bool,
                             max_msg_size: int) -> UpstreamWebSocket:
        return await self._websockets.open_websocket(target, headers, protocols, compress,
                                                     max_msg_size)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop()[0].close()
        await self._websockets.close()


async def _read_head(proto: _Protocol) -> tuple[RawResponseMessage, StreamReader]:
    """The final response's head; informational (1xx) answers are skipped."""
    while True:
        message, payload = await proto.read()
        if _final(message):
            return message, payload


def _final(message: RawResponseMessage) -> bool:
    return not 100 <= message.code < 200


async def _send_body(proto: _Protocol, body: aiohttp.StreamReader, chunked: bool) -> bool:
    """Stream the request body; True once all of it is written. On any failure the
    upstream connection is aborted, so the upstream sees an unfinished request, never a
    shortened one that looks complete, and the response read fails."""
    transport = proto.transport
    assert transport is not None
    try:
        while chunk := await body.readany():
            if chunked:
                transport.writelines([b"%x\r\n" % len(chunk), chunk, b"\r\n"])
            else:
                transport.write(chunk)
            if proto.writing_paused:
                await proto._drain_helper()
        if chunked:
            transport.write(b"0\r\n\r\n")
    except asyncio.CancelledError:
        proto.abort()
        raise
    except Exception as exc:
        proto.set_exception(aiohttp.ClientOSError(f"the request body broke off: {exc!r}"))
        proto.abort()
        return False
    # All sent: from here the upstream's silence counts against read_timeout_ms.
    proto.start_timeout()
    return True


def _cancel(task: asyncio.Task[bool] | None) -> None:
    if task is not None:
        task.cancel()
