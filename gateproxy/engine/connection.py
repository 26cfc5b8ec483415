"""`Connection`: one client connection on the proxy port, an `asyncio.Protocol` with
httptools' `HttpRequestParser` (llhttp).

llhttp's callbacks fill an `Exchange` per request (gateproxy/engine/exchange.py) and
queue it; once a read has been parsed, the first exchange in the queue is carried out
(gateproxy/engine/carry.py), and each one that is `finished` starts the next, so
pipelined requests are answered in order, each after the one before it. Nothing here
awaits: every step is a callback of the loop. The connection's phase
(gateproxy/engine/phases.py) says which clock runs: the head timeout (a 408), the body's
stall and minimum rate (the connection is aborted), the keep-alive timeout, or none
while an answer is under way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, NamedTuple, Protocol, cast

import httptools

from gateproxy.engine.exchange import Exchange
from gateproxy.engine.flow import Chunks, Drain
from gateproxy.engine.phases import CLOCK, TABLE, BadStep, Clock, Event, Phase, step
from gateproxy.logs import log

LINGER_S: Final = 2.0  # a closing connection's last answer gets this long to be read
MAX_QUEUED: Final = 16  # pipelined requests parsed ahead before reading pauses
# Header fields in one request head: bounded work per request, far above what browsers
# and HTTP libraries send.
MAX_HEADERS: Final = 128
_FOR_GOOD: Final = 1 << 30  # a pause count no resume brings back to 0
# llhttp's readings of the common methods and versions, as the planner reads them.
_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                            "OPTIONS", "CONNECT", "TRACE")}
_VERSIONS: Final = {"1.1": (1, 1), "1.0": (1, 0)}


class Limits(NamedTuple):
    """The clocks and sizes of a client connection (`limits.*`)."""

    head_timeout_s: float
    body_timeout_s: float
    body_min_rate: float  # bytes per second, beyond the first body_timeout_s
    keepalive_s: float
    max_field_size: int
    max_head_size: int


class Carrier(Protocol):
    """What carries an exchange out (gateproxy/engine/carry.py)."""

    def carry(self, exchange: Exchange, conn: Connection) -> None:
        """Start carrying `exchange` out; `conn.finished` is told when it is done."""

    def refuse(self, conn: Connection, why: str) -> None:
        """Answer a request that cannot be parsed (400), and close."""

    def time_out(self, conn: Connection) -> None:
        """Answer a request whose head did not come in time (408), and close."""

    def trailer_ends(self, name: bytes) -> bool:
        """Whether a request trailer field (dropped, never a header) ends the connection."""


class Reader(Protocol):
    """The upstream end of an answer being relayed: held back while the client's socket
    is full (gateproxy/engine/upstream.py `Request`)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Site(Protocol):
    """What a connection asks of the listener it came from (gateproxy/engine/listener.py)."""

    limits: Limits
    carrier: Carrier
    draining: bool

    def admit(self, conn: Connection) -> bool:
        """A place under the connection cap now; False: it waits (or was refused)."""

    def closed(self, conn: Connection) -> None: ...

    def tally(self, kind: str) -> None:
        """A limit event, counted and logged now and then."""


class Connection(asyncio.Protocol):
    """One client connection; see the module's docstring."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peername: object = None
        self.tls = False
        self.parser = httptools.HttpRequestParser(self)
        self.phase = Phase.IDLE
        self.drain = Drain()
        self.queue: deque[Exchange] = deque()
        self.reading: Exchange | None = None  # the request llhttp is filling
        self.upgrading: Exchange | None = None  # llhttp stopped after its head
        self.busy = False  # an exchange is being carried out
        self.lost = False
        self.written = 0  # bytes written to the client (the access log's)
        self.tunnel: asyncio.Future[None] | None = None  # bytes are relayed
        self.relay: Reader | None = None  # the answer being relayed, from upstream
        self._carrying = False  # in `_next`: exchanges finished there do not recurse
        self._admitted = False
        self._held = b""  # bytes that came before the connection was admitted
        self._paused = 0  # why reading is paused: a count of Chunks and queue holds
        self._head_bytes = 0
        self._first = True
        self._url = b""
        self._max_field_size = site.limits.max_field_size
        self._deadline = 0.0
        limits = site.limits
        self._tick_s = min(limits.head_timeout_s, limits.body_timeout_s, limits.keepalive_s)
        self._body_start = 0.0
        self._body_bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not derive from asyncio's classes.
        self.transport = transport = cast(asyncio.Transport, transport)
        self.peername = transport.get_extra_info("peername")
        self.tls = transport.get_extra_info("sslcontext") is not None
        if self.site.admit(self):
            self.admitted()
        else:
            transport.pause_reading()

    def admitted(self) -> None:
        """Served from now on: reading starts, and so does the first head's clock."""
        self._admitted = True
        self._enter(Phase.IDLE, self.site.limits.head_timeout_s)
        if self.transport is not None:
            self.transport.resume_reading()
        held, self._held = self._held, b""
        if held:
            self.data_received(held)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            # Some loops (uvloop) read after connection_made whatever it asked: keep it.
            self._held += data
            return
        phase = self.phase
        if phase == Phase.CLOSING or self._paused >= _FOR_GOOD:
            return
        upgrading = self.upgrading
        if upgrading is not None:
            if data and upgrading.tunnel is not None:
                upgrading.tunnel.feed(data)
            return
        if self.reading is None or not self.reading.head_done:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
            reading = self.reading
            if reading is not None and not reading.head_done \
                    and self._head_bytes > self.site.limits.max_head_size:
                # llhttp keeps no head, but httptools gathers each field whole.
                self._refuse("the request head is too large")
        except httptools.HttpParserUpgrade as upgrade:
            # The head of an upgrade (or CONNECT) is complete; what follows it is not
            # HTTP until the upstream has switched protocols.
            offset = upgrade.args[0] if upgrade.args else len(data)
            upgrading = self.upgrading
            if upgrading is not None and upgrading.tunnel is not None and offset < len(data):
                upgrading.tunnel.feed(data[offset:])
        except httptools.HttpParserError as exc:
            reading = self.reading
            if reading is not None and reading.head_done:
                # A body that breaks off mid-way (a bad chunk): the request can never be
                # completed; its exchange aborts the connection.
                self.site.tally("badRequests")
                reading.body.fail(ConnectionAbortedError("the request body is malformed"))
                self.reading = None
                self._stop_reading()
            else:
                self._refuse(_why(exc))
        if self.queue and not self.busy:
            self._next()

    def eof_received(self) -> bool | None:
        if self.upgrading is not None:
            # A tunnel's end shut its side: the tunnel ends both connections once what
            # is on its way has been written.
            if self.upgrading.tunnel is not None:
                self.upgrading.tunnel.end()
            return True
        # A client that shuts its side is gone, as browsers and HTTP clients mean it: its
        # upstream request is abandoned with the connection (connection_lost follows).
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self._stop_timer()
        self.drain.lost()
        reading = self.reading
        if reading is not None and not reading.complete:
            reading.body.fail(ConnectionAbortedError("the client went away"))
        if self.upgrading is not None and self.upgrading.tunnel is not None:
            self.upgrading.tunnel.end()
        if self.busy and self.queue:
            stop = self.queue[0].stop
            if stop is not None:
                stop()  # the client went away: so does its upstream request
        self.site.closed(self)

    def pause_writing(self) -> None:
        self.drain.pause()
        if self.relay is not None:
            self.relay.pause_reading()

    def resume_writing(self) -> None:
        self.drain.resume()
        if self.relay is not None:
            self.relay.resume_reading()

    # --- llhttp's callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._paused >= _FOR_GOOD:
            raise _Stopped  # the rest of this packet is not read
        self.reading = Exchange(self.loop.time())
        self._first = False
        self._url = b""
        self._step(Event.BYTES)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_field_size:
            raise _TooLarge("the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        reading = self.reading
        if reading is None:
            return
        if reading.head_done:
            # A trailer field of a chunked body: never a header, of this request or of
            # any other.
            if self.site.carrier.trailer_ends(name):
                reading.ends = True
            return
        if len(name) + len(value) > self._max_field_size:
            raise _TooLarge("a header field is too large")
        raw = reading.raw_headers
        if len(raw) >= MAX_HEADERS:
            raise _TooLarge(f"the request has more than {MAX_HEADERS} header fields")
        raw.append((name, value))
        reading.names.append(name.lower())

    def on_headers_complete(self) -> None:
        reading = self.reading
        if reading is None:
            return
        parser = self.parser
        method = parser.get_method()
        reading.method = _METHODS.get(method) or method.decode("ascii", "replace")
        reading.target = self._url
        version = parser.get_http_version()
        reading.version = _VERSIONS.get(version) or (
            (int(version[0]), int(version[2])) if len(version) == 3 else (1, 1))
        reading.head_done = True
        names = reading.names
        self._head_bytes = 0
        queue = self.queue
        queue.append(reading)
        if len(queue) > MAX_QUEUED:
            self._hold_reading()
        if parser.should_upgrade():
            reading.upgrade = reading.complete = True
            reading.tunnel = Chunks(self._hold_reading, self._unhold_reading)
            self.upgrading = reading
            self.reading = None
            self._step(Event.MESSAGE)
        elif b"content-length" in names or b"transfer-encoding" in names:
            reading.has_body = True
            reading.expect_body(self._hold_reading, self._unhold_reading)
            self._step(Event.HEAD)
            self._body_start = self.loop.time()
            self._body_bytes = 0

    def on_body(self, body: bytes) -> None:
        reading = self.reading
        if reading is not None:
            reading.body.feed(body)
            self._body_bytes += len(body)
            self._body_moved()

    def on_message_complete(self) -> None:
        reading = self.reading
        if reading is None or reading.upgrade:
            return
        reading.complete = True
        if reading.has_body:
            reading.body.end()
        self.reading = None
        self._step(Event.MESSAGE)
        if reading.answered and not self.queue:
            # Answered before its body had all come (the gate's 503 to an upload): the
            # connection is idle from now on.
            self._step(Event.ANSWERED)
            self._enter(Phase.IDLE, self.site.limits.keepalive_s)
        if reading.ends:
            self._stop_reading()  # nothing after it is read: no request hides there

    # --- the exchanges, in order -------------------------------------------------------

    def _next(self) -> None:
        """Carry out the exchanges that are ready, one at a time, in order."""
        if self._carrying:
            return
        self._carrying = True
        carrier = self.site.carrier
        try:
            while self.queue and not self.busy and not self.lost \
                    and self.transport is not None and not self.transport.is_closing():
                self.busy = True
                carrier.carry(self.queue[0], self)
        except Exception as exc:  # a bug, never the client's doing: this connection ends
            log.opt(exception=exc).error("request_error", message=repr(exc))
            self.abort()
        finally:
            self._carrying = False

    def finished(self, exchange: Exchange, keep: bool) -> None:
        """The carrier is done with `exchange` (the first in the queue); `keep`: the
        connection may take its next request."""
        exchange.answered = True
        self.queue.popleft()
        self.busy = False
        if len(self.queue) == MAX_QUEUED:
            self._unhold_reading()
        if not keep or self.site.draining or self.lost:
            self.finish()
            return
        if self.tunnel is not None:
            return
        if self.queue:
            self._next()
        elif self.phase is Phase.ANSWER:
            self._step(Event.ANSWERED)
            self._enter(Phase.IDLE, self.site.limits.keepalive_s)

    # --- what an exchange's carrier does with the connection ----------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.written += len(data)
            self.transport.write(data)

    def writelines(self, data: list[bytes] | tuple[bytes, ...]) -> None:
        if self.transport is not None and not self.lost:
            self.written += sum(map(len, data))
            self.transport.writelines(data)

    def linger(self, data: bytes) -> None:
        """Write a last answer, then let the client read it: unread request bytes would
        otherwise make the kernel reset the connection and drop the answer with it.
        Input is discarded until the client closes, or LINGER_S at most."""
        transport = self.transport
        self.phase = step(self.phase, Event.CLOSE)
        self._stop_timer()
        if transport is None or self.lost or transport.is_closing():
            return
        transport.write(data)
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self._timer = self.loop.call_later(LINGER_S, transport.close)

    def finish(self) -> None:
        """Close after what is written (an answer that closes the connection)."""
        if self.phase != Phase.CLOSING:
            self.phase = step(self.phase, Event.CLOSE)
        self._stop_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """End now, unclean: once a request has started upstream, or an answer has
        started, nothing else tells the other side that it is cut short."""
        self.phase = Phase.CLOSING
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()

    def upgraded(self) -> None:
        """The upstream switched protocols: from now on bytes are relayed."""
        self.phase = step(self.phase, Event.UPGRADED)
        self._stop_timer()

    def _refuse(self, why: str) -> None:
        """A request that cannot be parsed: its 400, after the answers before it."""
        if self._paused >= _FOR_GOOD:
            return  # the rest of a packet after the connection's last request
        self.site.tally("badRequests")
        self._stop_reading()
        self.reading = None
        if self.busy or self.queue:
            # Answered in turn: the 400 follows the answers of the requests before it.
            refusal = Exchange(self.loop.time())
            refusal.refusal = why
            self.queue.append(refusal)
        else:
            self.site.carrier.refuse(self, why)

    def _stop_reading(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()
        self._paused = _FOR_GOOD

    # --- flow control --------------------------------------------------------------------

    def _hold_reading(self) -> None:
        self._paused += 1
        if self._paused == 1 and self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def _unhold_reading(self) -> None:
        self._paused -= 1
        if self._paused == 0 and self.transport is not None and not self.lost:
            self.transport.resume_reading()
            self._forgive()

    # --- the clocks ----------------------------------------------------------------------

    def _step(self, event: str) -> None:
        phase = TABLE.get((self.phase, event))
        if phase is None:
            raise BadStep(f"{event} in phase {self.phase}")
        if phase is self.phase:
            return
        self.phase = phase
        clock = CLOCK[phase]
        if clock is Clock.HEAD:
            self._enter(phase, self.site.limits.head_timeout_s)
        elif clock is Clock.BODY:
            self._enter(phase, self.site.limits.body_timeout_s)
        # Clock.NONE: the timer is left to fire (it finds no clock running and lapses),
        # so that the next phase's clock usually finds it still armed.

    def _enter(self, phase: str, allowance_s: float) -> None:
        self.phase = phase
        self._deadline = self.loop.time() + allowance_s
        # One timer, moved later lazily: it fires at most `_tick_s` apart and finds the
        # deadline moved, so no phase's deadline comes before it and none remakes it.
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        loop = self.loop
        self._timer = loop.call_at(min(self._deadline, loop.time() + self._tick_s), self._check)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _body_moved(self) -> None:
        """Bytes of the body arrived: the deadline is the sooner of `body_timeout_s` of
        silence and the allowance plus what has come in at the minimum rate."""
        limits = self.site.limits
        self._deadline = min(self.loop.time() + limits.body_timeout_s,
                             self._body_start + limits.body_timeout_s
                             + self._body_bytes / limits.body_min_rate)

    def _forgive(self) -> None:
        """The proxy held the client back: that time is not the client's to account for."""
        limits = self.site.limits
        now = self.loop.time()
        if self.phase == Phase.HEAD:
            self._deadline = max(self._deadline, now + limits.head_timeout_s)
        elif self.phase == Phase.BODY:
            self._deadline = max(self._deadline, now + limits.body_timeout_s)
            self._body_start = now
            self._body_bytes = 0

    def _check(self) -> None:
        self._timer = None
        if self.lost:
            return
        phase = self.phase
        clock = CLOCK[phase]
        if clock == Clock.NONE or clock == Clock.LINGER:
            return
        if self._paused or (clock == Clock.HEAD and (self.busy or self.queue)):
            # Held back by the proxy, or a head pipelined behind answers under way (the
            # client has no reason to hurry; a 408 now would land inside another answer).
            self._forgive()
        now = self.loop.time()
        if now < self._deadline:
            self._arm()
            return
        if clock == Clock.KEEPALIVE:
            if self._first and self.reading is None:
                self.site.tally("idleClosed")
            self.finish()
        elif clock == Clock.HEAD:
            self.site.tally("headTimeouts")
            self.site.carrier.time_out(self)
        else:
            self.site.tally("bodyTimeouts")
            reading = self.reading
            if reading is not None:
                reading.body.fail(ConnectionAbortedError("the request body stalled"))
            self.abort()


class _Stopped(Exception):
    """Reading has stopped for good; raised in llhttp's callback to end the packet."""


class _TooLarge(Exception):
    """A header field over `limits.max_field_size` (raised inside llhttp's callback)."""


def _why(exc: httptools.HttpParserError) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, _TooLarge):
        return str(cause)
    return "the request is malformed"
