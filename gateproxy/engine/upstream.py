"""The upstream side of the core: one pooled keep-alive HTTP/1.1 client for the one
upstream, on `asyncio.Protocol` and httptools' `HttpResponseParser` (llhttp).

`Pool.send` writes a request head (and its body, piped from a `Chunks` as it comes) on an
idle pooled connection, or on a new one made through the connect step
(gateproxy/upstream/reconnect.py), and the answer goes to the request's `Sink` as
llhttp reads it: its head, its body's pieces, its end, or its failure. Nothing waits:
every step is a callback, so a small answer is relayed within the read that brought it.
`Pool.fetch` is the same request for a caller that awaits (the health view).

What goes wrong becomes an `UpstreamError` through the one map
(gateproxy/upstream/interface.py `failure`): a refused or reset connection, the connect
timeout, the read timeout (`upstream.read_timeout_ms` of silence, from the moment the
request is all sent), and an answer llhttp cannot parse, at any point: its connection is
closed and the sink is told at once, never left waiting. A pooled connection that turns
out closed before any byte of its answer is tried once more on a fresh connection, for
requests that are safe to repeat and carry no body.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, Protocol, cast

import httptools

from gateproxy.engine import wire
from gateproxy.engine.flow import Chunks, Drain
from gateproxy.logs import log
from gateproxy.upstream.interface import (
    UNAVAILABLE,
    ConnectStep,
    ConnectTimeout,
    Disconnected,
    Malformed,
    UpstreamError,
    failure,
)

Field = tuple[bytes, bytes]

# RFC 9110 section 9.2.2: a request with one of these methods may be repeated.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Idle pooled connections are closed after this long: under Node's default
# keepAliveTimeout (5 s), so that usually the proxy, not the upstream, closes first.
POOL_IDLE_S: Final = 4.0
MAX_IDLE: Final = 256

LENGTH, CHUNKED, UNTIL_CLOSE, NONE = "length", "chunked", "close", "none"


class Sink(Protocol):
    """What an upstream answer goes to, as it arrives (gateproxy/engine/carry.py `Relay`)."""

    def answer_head(self, status: int, reason: bytes, raw_headers: list[Field],
                    names: list[bytes], framing: str) -> None:
        """The answer's head (`names`: its header names in lower case); `framing`: how
        its body is delimited (NONE: it has none)."""

    def answer_body(self, data: bytes) -> None: ...

    def answer_end(self) -> None:
        """The answer is complete (its connection is back in the pool)."""

    def answer_failed(self, error: UpstreamError) -> None:
        """No (whole) answer: before its head, or within its body."""

    def answer_switched(self, reason: bytes, raw_headers: list[Field], names: list[bytes],
                        upstream: Connection, rest: Chunks) -> None:
        """A 101: the connection is the sink's from now on, its bytes arriving in `rest`."""

    def flush(self) -> None:
        """A read has been parsed: what it gave may be written on."""


class Request:
    """One request on its way: the bytes to send, and the connection carrying it."""

    __slots__ = ("body", "chunked", "conn", "done", "fresh", "head", "method", "pool", "sink",
                 "task")

    def __init__(self, pool: Pool, sink: Sink, method: str, head: bytes, body: Chunks | None,
                 chunked: bool) -> None:
        self.pool = pool
        self.sink = sink
        self.method = method
        self.head = head
        self.body = body
        self.chunked = chunked
        self.conn: Connection | None = None
        self.task: asyncio.Task[Connection] | None = None  # connecting
        self.fresh = False  # on a connection made for it (a stale one is not retried)
        self.done = False

    @property
    def retryable(self) -> bool:
        return not self.fresh and self.body is None and self.method in IDEMPOTENT

    def pause_reading(self) -> None:
        """The client's socket is full: the answer waits upstream."""
        if self.conn is not None:
            self.conn.pause_reading()

    def resume_reading(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def cancel(self) -> None:
        """Given up (the client went away, or wants no more of the answer): nothing more
        reaches the sink, and the connection, out of step, is dropped."""
        self.done = True
        if self.task is not None:
            self.task.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.drop()


class Connection(asyncio.Protocol):
    """One upstream connection: its parser, its read timeout, the request being answered."""

    __slots__ = ("_armed", "_deadline", "_pool", "_timer", "delivered", "drain", "framing",
                 "got_bytes", "headers", "loop", "lost", "names", "parser", "piping", "reason",
                 "request", "reusable", "skip_body", "status", "transport", "tunnel")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.drain = Drain()
        self.request: Request | None = None
        self.status = 0
        self.reason = b""
        self.headers: list[Field] = []
        self.names: list[bytes] = []  # the header names in lower case
        self.framing = NONE
        self.delivered = False  # the current answer's head went to its sink
        self.skip_body = False  # the request was HEAD: its answer has no body
        self.reusable = True
        self.got_bytes = False  # of the current answer
        self.lost = False
        self.piping: Chunks | None = None  # a request body being streamed up
        self.tunnel: Chunks | None = None  # after a 101: where the bytes go, unparsed
        self._deadline = 0.0
        self._armed = False  # the read timeout runs
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not derive from asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self._armed:
            self._deadline = self.loop.time() + self._pool.read_timeout_s
        if self.tunnel is not None:
            self.tunnel.feed(data)
            return
        request = self.request
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            if request is not None and self.status == 101:
                self._switch(request, data[offset:])
            else:
                self._fail(Malformed("an upgrade the request did not ask for"))
            return
        except httptools.HttpParserCallbackError as exc:
            # A bug on the sink's side, never the upstream's doing: told as a failure, so
            # that the client is answered.
            log.opt(exception=exc.__context__).error("request_error",
                                                     message=repr(exc.__context__))
            self._fail(Malformed("an answer the proxy could not relay"))
            return
        except httptools.HttpParserError as exc:
            self._fail(Malformed(f"a malformed answer ({exc})"))
            return
        if request is not None and self.request is request:
            request.sink.flush()

    def eof_received(self) -> bool | None:
        return None  # close: the upstream's end of a close-delimited body is its last

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.reusable = False
        self._armed = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.drain.lost()
        if self.tunnel is not None:
            self.tunnel.end()
            return
        request = self.request
        if request is None:
            return
        if not self.delivered:
            if not self.got_bytes and request.retryable:
                # A pooled connection the upstream had closed: nothing of the request was
                # read, and one that is safe to repeat is sent once more.
                self._detach()
                self._pool.connect(request)
                return
            self._fail(Disconnected("the upstream closed the connection"))
        elif self.framing == UNTIL_CLOSE:
            self._complete()  # its end is the connection's
        else:
            self._fail(Disconnected("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self.drain.pause()
        if self.piping is not None:
            self.piping.hold()

    def resume_writing(self) -> None:
        self.drain.resume()
        if self.piping is not None:
            self.piping.unhold()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    # --- httptools' callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # (After the head: a trailer of a chunked body, into a list nobody reads.)
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.request
        if request is None:
            return
        status = self.parser.get_status_code()
        self.status = status
        headers = self.headers
        names = self.names = [name.lower() for name, _ in headers]
        if 100 <= status < 200:
            return  # informational: skipped (a 101 ends in HttpParserUpgrade)
        self.headers = []  # for the trailers of a chunked body, dropped
        if not self.parser.should_keep_alive():
            self.reusable = False
        length, chunked = wire.framing(headers, names)
        if self.skip_body or status in (204, 304):
            framing = NONE
        elif chunked:
            framing = CHUNKED
        elif length:
            framing = LENGTH
        else:
            framing = UNTIL_CLOSE
            self.reusable = False
        self.framing = framing
        self.delivered = True
        request.sink.answer_head(status, self.reason, headers, names, framing)
        if framing == NONE and self.request is request:
            # llhttp would wait for the Content-Length of a HEAD answer's body: this
            # answer is complete now, and its connection, whose parser is out of step, is
            # not used again.
            if self.skip_body:
                self.reusable = False
            self._complete()

    def on_body(self, body: bytes) -> None:
        request = self.request
        if request is not None and self.delivered:
            request.sink.answer_body(body)

    def on_message_complete(self) -> None:
        if self.request is not None and self.delivered:
            self._complete()

    # --- the exchange ----------------------------------------------------------------

    def carry(self, request: Request) -> None:
        """Send `request` and take its answer."""
        self.request = request
        request.conn = self
        self.skip_body = request.method == "HEAD"
        self.got_bytes = False
        self.delivered = False
        self.status = 0
        transport = self.transport
        assert transport is not None
        body = request.body
        if body is None:
            transport.write(request.head)
            self.sent()
            return
        whole = body.whole()
        if whole is not None:
            transport.writelines(wire.whole_body(request.head, whole, request.chunked))
            self.sent()
        else:
            transport.write(request.head)
            self.piping = body
            body.pipe(self)

    # A request body, piped from the client (gateproxy/engine/flow.py `Target`).

    def body_data(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            request = self.request
            self.transport.writelines(wire.chunk(data) if request is not None
                                      and request.chunked else (data,))

    def body_end(self) -> None:
        request = self.request
        self.piping = None
        if request is not None and request.chunked and self.transport is not None:
            self.transport.write(wire.LAST_CHUNK)
        self.sent()

    def body_failed(self, exc: BaseException) -> None:
        """The client's body broke off: the upstream sees an unfinished request, never a
        shortened one that looks complete."""
        self.piping = None
        self._fail(Disconnected("the request body broke off"))

    def sent(self) -> None:
        """The request is all written: from now on the upstream's silence counts."""
        if self._pool.read_timeout_s and self.request is not None:
            self._armed = True
            self._deadline = self.loop.time() + self._pool.read_timeout_s
            # One timer, kept across requests: when it fires it finds the deadline moved
            # (or the clock stopped) instead of being remade for every request.
            if self._timer is None:
                self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._armed:
            return
        now = self.loop.time()
        if now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)
            return
        self._fail(TimeoutError())

    def _detach(self) -> Request | None:
        """The current request leaves this connection."""
        request, self.request = self.request, None
        self._armed = False
        if self.piping is not None:
            self.piping.unpipe()
            self.piping = None
            self.reusable = False  # its body is not all sent: out of step
        if request is not None:
            request.conn = None
        return request

    def _complete(self) -> None:
        request = self._detach()
        if request is None:
            return
        request.done = True
        self._pool.release(self)
        request.sink.answer_end()

    def _switch(self, request: Request, rest: bytes) -> None:
        self._detach()
        request.done = True
        self.reusable = False
        tunnel = self.tunnel = Chunks(self.pause_reading, self.resume_reading)
        if rest:
            tunnel.feed(rest)
        request.sink.answer_switched(self.reason, self.headers, self.names, self, tunnel)

    def _fail(self, exc: BaseException) -> None:
        """The exchange on this connection cannot go on: its sink is told, and the
        connection is closed."""
        mid_body = self.delivered
        request = self._detach()
        self.drop()
        if request is not None and not request.done:
            request.done = True
            request.sink.answer_failed(failure(exc, self._pool.read_timeout_ms,
                                               mid_body=mid_body))

    def drop(self) -> None:
        """Close now, the current request with it (nothing more reaches its sink)."""
        self._detach()
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Keep-alive HTTP/1.1 to the one upstream origin (a LIFO pool: the hottest idle
    connections are reused, the rest expire)."""

    def __init__(self, base_url: str, connect_timeout_ms: int, read_timeout_ms: int,
                 connects: ConnectStep) -> None:
        origin = wire.Origin.parse(base_url)
        self.origin = origin
        self.read_timeout_ms = read_timeout_ms
        self.read_timeout_s = read_timeout_ms / 1000
        self._connect_timeout_s = connect_timeout_ms / 1000
        self._connects = connects
        self._idle: deque[tuple[Connection, float]] = deque()
        self._closed = False

    # --- one request -------------------------------------------------------------------

    def send(self, sink: Sink, method: str, target: str, fields: list[Field],
             body: Chunks | None) -> Request:
        """Send a request with these header lines (`Host` first, when there is one); its
        answer goes to `sink`. `body`: the request's, as the client sends it (None: it has
        none). Raises UpstreamError for a request that cannot be sent at all."""
        if self._closed:
            raise UpstreamError(UNAVAILABLE, "the proxy is shutting down")
        chunked = body is not None and not wire.announces_length(fields)
        head = wire.request_head(self.origin, method, target, fields, body is not None,
                                 chunked)
        request = Request(self, sink, method, head, body, chunked)
        conn = self._pooled()
        if conn is not None:
            conn.carry(request)
        else:
            self.connect(request)
        return request

    async def fetch(self, method: str, target: str, fields: list[Field],
                    body: Chunks | None = None) -> Fetched:
        """`send` for a caller that awaits: the answer once its head has come."""
        fetched = Fetched()
        fetched.request = self.send(fetched, method, target, fields, body)
        try:
            return await fetched.arrived
        except asyncio.CancelledError:
            fetched.close()
            raise

    # --- the pool ----------------------------------------------------------------------

    def _pooled(self) -> Connection | None:
        idle = self._idle
        if idle:
            now = idle[-1][0].loop.time()
            while idle:
                conn, since = idle.pop()
                if now - since < POOL_IDLE_S and conn.reusable and not conn.lost:
                    return conn
                conn.drop()
        return None

    def release(self, conn: Connection) -> None:
        """A whole answer has been read: the connection may carry the next request."""
        if self._closed or not conn.reusable or conn.lost or len(self._idle) >= MAX_IDLE:
            conn.drop()
            return
        now = conn.loop.time()
        idle = self._idle
        idle.append((conn, now))
        # The stack's bottom holds the connections least recently used: expire them
        # here, one per release, instead of keeping a timer.
        if now - idle[0][1] >= POOL_IDLE_S:
            idle.popleft()[0].drop()

    def connect(self, request: Request) -> None:
        """Carry `request` on a new connection, made through the connect step."""
        request.fresh = True
        task = request.task = asyncio.get_running_loop().create_task(
            self._connects.connect(self._open))
        task.add_done_callback(lambda done: self._connected(request, done))

    def _connected(self, request: Request, task: asyncio.Task[Connection]) -> None:
        request.task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            conn = task.result()
            if request.done:
                self.release(conn)  # the client went away meanwhile: kept for the next
            else:
                conn.carry(request)
            return
        if request.done:
            return
        request.done = True
        if not isinstance(exc, UpstreamError | OSError | TimeoutError):
            log.opt(exception=exc).error("request_error", message=repr(exc))
        request.sink.answer_failed(failure(exc, self.read_timeout_ms))

    async def _open(self) -> Connection:
        """One connection attempt; nothing is sent on it yet."""
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: Connection(self), origin.host, origin.port, ssl=origin.ssl)
        except TimeoutError:
            raise ConnectTimeout(f"connection timeout to {origin.authority}") from None
        return conn

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop()[0].drop()


class Fetched:
    """An answer for a caller that awaits it (`Pool.fetch`): its head, then its body's
    pieces through `iter_chunks`."""

    def __init__(self) -> None:
        self.arrived: asyncio.Future[Fetched] = asyncio.get_running_loop().create_future()
        self.request: Request | None = None
        self.status = 0
        self.reason = b""
        self.raw_headers: list[Field] = []
        # Unbounded: the caller (the health view) reads a small answer under a timeout.
        self.body = Chunks(_nothing, _nothing)

    def answer_head(self, status: int, reason: bytes, raw_headers: list[Field],
                    names: list[bytes], framing: str) -> None:
        self.status, self.reason, self.raw_headers = status, reason, raw_headers
        if not self.arrived.done():
            self.arrived.set_result(self)

    def answer_body(self, data: bytes) -> None:
        self.body.feed(data)

    def answer_end(self) -> None:
        self.body.end()

    def answer_failed(self, error: UpstreamError) -> None:
        if not self.arrived.done():
            self.arrived.set_exception(error)
        self.body.fail(error)

    def answer_switched(self, reason: bytes, raw_headers: list[Field], names: list[bytes],
                        upstream: Connection, rest: Chunks) -> None:
        upstream.drop()
        self.answer_failed(UpstreamError(UNAVAILABLE, "the upstream switched protocols"))

    def flush(self) -> None:
        return None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        body = self.body
        while chunk := await body.read():
            yield chunk

    def close(self) -> None:
        """Done with it: an answer not read to its end drops its connection."""
        if self.request is not None and not self.request.done:
            self.request.cancel()


def _nothing() -> None:
    return None
