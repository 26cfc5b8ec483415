"""The upstream side of the core: one pooled keep-alive HTTP/1.1 client for the one
upstream, on `asyncio.Protocol` and httptools' `HttpResponseParser` (llhttp).

`Pool.send` writes a request head (and its body, from a `Chunks`) on an idle pooled
connection or a new one made through the connect step (gateproxy/upstream/reconnect.py),
and returns the answer once its head has arrived: an `Answer` whose body arrives in a
`Chunks`, read at the client's pace (reading from the upstream pauses while it is full).

What goes wrong becomes an `UpstreamError` through the one map
(gateproxy/upstream/interface.py `failure`): a refused or reset connection, the connect
timeout, the read timeout (`upstream.read_timeout_ms` of silence, from the moment the
request is all sent), and an answer llhttp cannot parse, at any point: its connection is
closed and the client is told at once, never left waiting. A pooled connection that turns
out closed before any byte of its answer is tried once more on a fresh connection, for
requests that are safe to repeat and carry no body.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, cast

import httptools
from multidict import CIMultiDict

from gateproxy.engine import wire
from gateproxy.engine.flow import Chunks, Drain
from gateproxy.upstream.interface import (
    UNAVAILABLE,
    BodySource,
    ConnectStep,
    ConnectTimeout,
    Disconnected,
    Malformed,
    UpstreamError,
    failure,
)

# RFC 9110 section 9.2.2: a request with one of these methods may be repeated.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Idle pooled connections are closed after this long: under Node's default
# keepAliveTimeout (5 s), so that usually the proxy, not the upstream, closes first.
POOL_IDLE_S: Final = 4.0
MAX_IDLE: Final = 256

LENGTH, CHUNKED, UNTIL_CLOSE, NONE = "length", "chunked", "close", "none"


class Answer:
    """The upstream's answer to one request: its head, how its body is framed, and the
    body as it arrives. `release` when the body has been read to its end, `close` to give
    it up (the connection is dropped)."""

    __slots__ = ("_conn", "_pool", "body", "framing", "length", "raw_headers", "reason",
                 "status", "upgraded")

    def __init__(self, conn: Connection, pool: Pool) -> None:
        self._conn: Connection | None = conn
        self._pool = pool
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.framing = NONE
        self.length: int | None = None
        self.body = Chunks(conn.pause_reading, conn.resume_reading)
        self.upgraded = False  # a 101: `body` is the upstream's bytes of the new protocol

    @property
    def connection(self) -> Connection:
        """The connection it came on (an upgraded one becomes the tunnel's)."""
        assert self._conn is not None
        return self._conn

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        body = self.body
        while chunk := await body.read():
            yield chunk

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    def detach(self) -> Connection:
        """The connection of a 101, taken out of the pool for good (a tunnel's)."""
        conn, self._conn = self._conn, None
        assert conn is not None
        conn.reusable = False
        return conn


class Connection(asyncio.Protocol):
    """One upstream connection: its parser, its read timeout, the answer being read."""

    __slots__ = ("_armed", "_deadline", "_pool", "_timer", "answer", "drain", "got_bytes", "head",
                 "loop", "lost", "parser", "pump", "reusable", "sink", "skip_body",
                 "transport")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.drain = Drain()
        self.answer: Answer | None = None
        self.head: asyncio.Future[Answer] | None = None
        self.skip_body = False  # the request was HEAD: its answer has no body
        self.reusable = True
        self.got_bytes = False  # of the current answer
        self.lost = False
        self.pump: asyncio.Task[None] | None = None  # a request body being streamed
        self.sink: Chunks | None = None  # after a 101: where the bytes go, unparsed
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
        if self.sink is not None:
            self.sink.feed(data)
            return
        answer = self.answer
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            if answer is not None and answer.status == 101:
                answer.upgraded = True
                self.sink = answer.body
                if offset < len(data):
                    answer.body.feed(data[offset:])
                self._stop_timer()
                self._settle_head()
            else:
                self._fail(Malformed("an upgrade the request did not ask for"))
        except httptools.HttpParserError as exc:
            self._fail(Malformed(f"a malformed answer ({exc})"))

    def eof_received(self) -> bool | None:
        return None  # close: the upstream's end of a close-delimited body is its last

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.reusable = False
        self._stop_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.drain.lost()
        if self.sink is not None:
            self.sink.end()
            return
        answer = self.answer
        if answer is None:
            return
        if self.head is not None and not self.head.done():
            self._fail(Disconnected("the upstream closed the connection"))
        elif answer.framing == UNTIL_CLOSE:
            answer.body.end()  # its end is the connection's
        elif not answer.body.ended:
            answer.body.fail(failure(Disconnected("the upstream closed the connection"),
                                     self._pool.read_timeout_ms, mid_body=True))

    def pause_writing(self) -> None:
        self.drain.pause()

    def resume_writing(self) -> None:
        self.drain.resume()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    # --- httptools' callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        answer = self.answer
        if answer is not None:
            answer.raw_headers = []
            answer.reason = ""

    def on_status(self, status: bytes) -> None:
        if self.answer is not None:
            self.answer.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        answer = self.answer
        if answer is not None and self.head is not None and not self.head.done():
            answer.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        answer = self.answer
        if answer is None:
            return
        status = self.parser.get_status_code()
        answer.status = status
        if 100 <= status < 200:
            return  # informational: skipped (a 101 ends in HttpParserUpgrade)
        if not self.parser.should_keep_alive():
            self.reusable = False
        length, chunked = wire.framing(answer.raw_headers)
        if self.skip_body or status in (204, 304):
            answer.framing = NONE
        elif chunked:
            answer.framing = CHUNKED
        elif length is not None:
            answer.framing = LENGTH
            answer.length = length
        else:
            answer.framing = UNTIL_CLOSE
            self.reusable = False
        if answer.framing == NONE:
            # llhttp would wait for the Content-Length of a HEAD answer's body: this
            # answer is complete now, and its connection, whose parser is out of step, is
            # not used again.
            if self.skip_body:
                self.reusable = False
            answer.body.end()
            self._stop_timer()
        self._settle_head()

    def on_body(self, body: bytes) -> None:
        answer = self.answer
        if answer is not None and answer.status >= 200 and not answer.body.ended:
            answer.body.feed(body)

    def on_message_complete(self) -> None:
        answer = self.answer
        if answer is None or 100 <= answer.status < 200:
            return
        self._stop_timer()
        answer.body.end()

    # --- the exchange ----------------------------------------------------------------

    def start(self, answer: Answer, skip_body: bool) -> asyncio.Future[Answer]:
        """Expect `answer` to the request about to be written."""
        self.answer = answer
        self.skip_body = skip_body
        self.got_bytes = False
        self.head = self.loop.create_future()
        return self.head

    def sent(self) -> None:
        """The request is all written: from now on the upstream's silence counts."""
        if self._pool.read_timeout_s and self.answer is not None and not self.answer.body.ended:
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

    def _stop_timer(self) -> None:
        self._armed = False

    def _settle_head(self) -> None:
        head = self.head
        if head is not None and not head.done() and self.answer is not None:
            head.set_result(self.answer)

    def _fail(self, exc: BaseException) -> None:
        """The exchange on this connection cannot go on: the waiter of its head, or the
        reader of its body, is told; the connection is closed."""
        self.reusable = False
        self._stop_timer()
        head, answer = self.head, self.answer
        if head is not None and not head.done():
            head.set_exception(exc)
        elif answer is not None:
            answer.body.fail(failure(exc, self._pool.read_timeout_ms, mid_body=True))
        self.abort()

    def abort(self) -> None:
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

    async def send(self, method: str, target: str, headers: CIMultiDict[str],
                   body: BodySource | None) -> Answer:
        """Send a request and return its answer's head; its body arrives as it comes.
        `body`: the request's, as the client sends it (None: it has none)."""
        if self._closed:
            raise UpstreamError(UNAVAILABLE, "the proxy is shutting down")
        whole = body.whole() if body is not None else None
        chunked = body is not None and "Content-Length" not in headers
        head = wire.request_head(self.origin, method, target, headers, body is not None,
                                 chunked)
        conn = self._pooled()
        if conn is not None:
            try:
                return await self._exchange(conn, method, head, body, whole, chunked)
            except Disconnected as exc:
                # A pooled connection the upstream had closed: nothing of the request
                # was read, and one that is safe to repeat is sent once more.
                if conn.got_bytes or body is not None or method not in IDEMPOTENT:
                    raise failure(exc, self.read_timeout_ms) from exc
        conn = await self._connect()
        try:
            return await self._exchange(conn, method, head, body, whole, chunked)
        except Disconnected as exc:
            raise failure(exc, self.read_timeout_ms) from exc

    async def _exchange(self, conn: Connection, method: str, head: bytes,
                        body: BodySource | None, whole: bytes | None, chunked: bool) -> Answer:
        answer = Answer(conn, self)
        arrived = conn.start(answer, method == "HEAD")
        transport = conn.transport
        assert transport is not None
        pump: asyncio.Task[None] | None = None
        if body is None:
            transport.write(head)
            conn.sent()
        elif whole is not None:
            transport.writelines(wire.whole_body(head, whole, chunked))
            conn.sent()
        else:
            transport.write(head)
            pump = conn.pump = conn.loop.create_task(_pump(conn, body, chunked))
        try:
            return await arrived
        except Disconnected:
            raise  # the caller's: a stale pooled connection is tried once more
        except (OSError, TimeoutError, Malformed) as exc:
            raise failure(exc, self.read_timeout_ms) from exc
        except BaseException:
            conn.abort()  # cancelled: the client went away, and so does its request
            raise
        finally:
            if pump is not None and (not arrived.done() or arrived.cancelled()
                                     or arrived.exception() is not None):
                pump.cancel()

    # --- the pool ----------------------------------------------------------------------

    def _pooled(self) -> Connection | None:
        idle = self._idle
        if idle:
            now = idle[-1][0].loop.time()
            while idle:
                conn, since = idle.pop()
                if now - since < POOL_IDLE_S and conn.reusable and not conn.lost:
                    return conn
                conn.abort()
        return None

    def release(self, conn: Connection) -> None:
        """A whole answer has been read: the connection may carry the next request."""
        conn.answer = None
        conn.head = None
        pump, conn.pump = conn.pump, None
        if self._closed or not conn.reusable or conn.lost or len(self._idle) >= MAX_IDLE \
                or (pump is not None and not pump.done()):
            # (A body still being sent when its answer is all read: the upstream answered
            # early, and the connection is out of step.)
            conn.abort()
            return
        now = conn.loop.time()
        idle = self._idle
        idle.append((conn, now))
        # The stack's bottom holds the connections least recently used: expire them
        # here, one per release, instead of keeping a timer.
        if now - idle[0][1] >= POOL_IDLE_S:
            idle.popleft()[0].abort()

    async def _connect(self) -> Connection:
        try:
            return await self._connects.connect(self._open)
        except (OSError, TimeoutError) as exc:
            raise failure(exc, self.read_timeout_ms) from exc

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
            self._idle.pop()[0].abort()


async def _pump(conn: Connection, body: BodySource, chunked: bool) -> None:
    """Stream a request body as the client sends it. When it breaks off (the client went
    away, or stalled past its timeout) the upstream connection is aborted, so the
    upstream sees an unfinished request, never a shortened one that looks complete."""
    transport = conn.transport
    assert transport is not None
    try:
        while chunk := await body.read():
            transport.writelines(wire.chunk(chunk) if chunked else (chunk,))
            if conn.drain.paused:
                await conn.drain.wait()
            if conn.lost:
                return
        if chunked:
            transport.write(wire.LAST_CHUNK)
    except asyncio.CancelledError:
        conn.abort()
        raise
    except Exception:
        conn.abort()
        return
    conn.sent()
