"""`Carrier`: carries one exchange out, as the planner says (gateproxy/http_rules/plan.py).

Per request: plan it; wait if the plan says so and plan again; then write the proxy's
own answer, have an endpoint answer, or forward it: a `Relay` sends it upstream (its body
piped up as it comes) and takes the answer's head, body and end as the upstream
connection reads them, writing each on to the client within the same read. For a
WebSocket, after the upstream's 101, bytes are relayed both ways
(gateproxy/engine/tunnel.py). Nothing here awaits: what takes time (a hold, an
endpoint, a new upstream connection) is a task whose end carries on. What to write and
whether the connection goes on is the planner's word each time; the carrier only moves
bytes and counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from gateproxy import logs
from gateproxy.core import answers
from gateproxy.core.answers import Answer, http_date
from gateproxy.engine import wire
from gateproxy.engine.connection import Connection
from gateproxy.engine.exchange import Exchange
from gateproxy.engine.flow import Chunks
from gateproxy.engine.tunnel import Tunnels
from gateproxy.engine.upstream import CHUNKED, NONE, Pool, Request
from gateproxy.engine.upstream import Connection as UpstreamConnection
from gateproxy.http_rules.actions import (
    Action,
    Endpoint,
    EndpointHandler,
    Field,
    ForwardPlan,
    Gated,
    Hold,
    LocalRequest,
    Reply,
    RequestHead,
    Upgrade,
)
from gateproxy.http_rules.plan import Planner
from gateproxy.logs import FORWARDED, GATED, LOCAL, log
from gateproxy.upstream.interface import UpstreamError

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_RECENT_MAX = 64  # distinct 503s whose bytes are kept (one a guard, Retry-After and origin)


class Counts(Protocol):
    """What the carrier counts (gateproxy/views/metrics.py)."""

    def count_forwarded(self, method: str, status: int) -> None: ...

    def count_hold(self, dependency: str, outcome: str) -> None: ...

    def observe_upstream(self, seconds: float) -> None: ...


class Carrier:
    """Carries exchanges out for every connection of the proxy's port."""

    def __init__(self, planner: Planner, pool: Pool, endpoints: Mapping[str, EndpointHandler],
                 counts: Counts, access_log: Callable[[], bool], tunnels: Tunnels) -> None:
        self.planner = planner
        self.pool = pool
        self.counts = counts
        self.access_log = access_log  # whether each request gets a line (live)
        self.tunnels = tunnels
        self._endpoints = endpoints
        self._recent: dict[tuple[Answer, bool, bool], tuple[str, bytes]] = {}

    def carry(self, exchange: Exchange, conn: Connection) -> None:
        """Start carrying `exchange` out; `conn.finished` is told when it is done."""
        if exchange.refusal is not None:
            self.refuse(conn, exchange.refusal)
            conn.finished(exchange, False)
            return
        head = exchange.head(conn.peername, conn.tls)
        self._act(exchange, conn, head, self.planner.plan(head), conn.written)

    def _act(self, exchange: Exchange, conn: Connection, head: RequestHead, action: Action,
             written: int) -> None:
        if isinstance(action, ForwardPlan | Upgrade):
            Relay(self, exchange, conn, head, action, written).start()
        elif isinstance(action, Gated):
            keep = self.own(exchange, conn, action.answer, head, kept=True)
            self.done(exchange, conn, head, action.answer.status, GATED, written, keep)
        elif isinstance(action, Hold):
            self._later(exchange, conn, head, self._hold(head, action), written)
        elif isinstance(action, Endpoint):
            self._later(exchange, conn, head, self._endpoint(head, action), written)
        else:
            keep = self.own(exchange, conn, action, head)
            self.done(exchange, conn, head, action.status, LOCAL, written, keep)

    def _later(self, exchange: Exchange, conn: Connection, head: RequestHead,
               waiting: Coroutine[Any, Any, Action], written: int) -> None:
        """Carry on with the action `waiting` ends in (cancelled if the client goes)."""
        task = conn.loop.create_task(waiting)
        exchange.stop = task.cancel

        def resume(task: asyncio.Task[Action]) -> None:
            exchange.stop = None
            if task.cancelled():
                return  # the client went away
            exc = task.exception()
            if exc is not None:  # a bug, never the client's doing: this connection ends
                log.opt(exception=exc).error("request_error", message=repr(exc))
                conn.abort()
                return
            self._act(exchange, conn, head, task.result(), written)

        task.add_done_callback(resume)

    def done(self, exchange: Exchange, conn: Connection, head: RequestHead, status: int,
             outcome: str, written: int, keep: bool) -> None:
        """The exchange is over: its access-log line, and the connection's next step."""
        if self.access_log():
            logs.access(head.method, head.target, status, conn.loop.time() - exchange.started,
                        outcome, conn.written - written, _local(head).peer)
        conn.finished(exchange, keep)

    # --- the proxy's own answers ------------------------------------------------------

    def own(self, exchange: Exchange, conn: Connection, answer: Answer, head: RequestHead,
            *, kept: bool = False) -> bool:
        """Write `answer`; `kept`: from the bytes kept for it (the gate's 503, written
        again and again under load; an endpoint's answer is new each time). True when the
        connection goes on."""
        if exchange.ends:
            answer = answer.closing()  # a trailer said so (Planner.trailer_ends)
        keep_alive_line, body = head.version < (1, 1), head.method != "HEAD"
        conn.write(self._rendered(answer, keep_alive_line, body) if kept else
                   answers.render(answer, http_date(), keep_alive_line=keep_alive_line,
                                  body=body))
        if answer.close:
            conn.finish()
            return False
        # A body nobody will read (the gate's 503 to an upload): it is read and dropped.
        exchange.body.drop()
        return True

    def _rendered(self, answer: Answer, keep_alive_line: bool, body: bool) -> bytes:
        """`answer`'s bytes. The recent ones are kept with the `Date` they were made with:
        the gate's 503 changes with its `Retry-After` (a header of the answer) and the
        `Date` only, so under a flood of them it is rendered once a second."""
        key = (answer, keep_alive_line, body)
        date = http_date()
        kept = self._recent.get(key)
        if kept is None or kept[0] is not date:
            if len(self._recent) >= _RECENT_MAX:
                self._recent.clear()
            kept = self._recent[key] = (date, answers.render(
                answer, date, keep_alive_line=keep_alive_line, body=body))
        return kept[1]

    def refuse(self, conn: Connection, why: str) -> None:
        conn.linger(answers.render(self.planner.malformed(why), http_date()))

    def time_out(self, conn: Connection) -> None:
        conn.linger(answers.error_bytes(
            "request_timeout", f"the request head did not arrive within "
            f"{round(conn.site.limits.head_timeout_s * 1000)} ms"))

    def trailer_ends(self, name: bytes) -> bool:
        return self.planner.trailer_ends(name)

    # --- waiting ----------------------------------------------------------------------

    async def _hold(self, head: RequestHead, hold: Hold) -> Action:
        """Wait as the plan says, then plan again: a first probe's answer is worth a
        short wait; a held request waits up to hold_ms for its dependency to come back."""
        planner = self.planner
        if not hold.hold:
            await hold.watch.wait_change(hold.timeout_s)
            return planner.plan(head, waited=True)
        try:
            held = await hold.watch.hold(hold.timeout_s, hold.limit)
        except asyncio.CancelledError:  # the client went away: its slot is free again
            self.counts.count_hold(hold.dependency, "cancelled")
            raise
        action = planner.plan(head, waited=True)
        if held:
            self.counts.count_hold(hold.dependency, "timed_out" if type(action) is Gated
                                   else "forwarded")
        return action

    async def _endpoint(self, head: RequestHead, endpoint: Endpoint) -> Action:
        answer = await self._endpoints[endpoint.name](_local(head))
        return answer.closing() if endpoint.close else answer


class Relay:
    """One forwarded request: sent upstream, its answer written on to the client as the
    upstream connection reads it (the upstream's `Sink`)."""

    __slots__ = ("_carrier", "_conn", "_exchange", "_forward", "_head", "_out", "_plan",
                 "_reply", "_request", "_sent_at", "_status", "_written", "_wrote")

    def __init__(self, carrier: Carrier, exchange: Exchange, conn: Connection,
                 head: RequestHead, plan: ForwardPlan | Upgrade, written: int) -> None:
        self._carrier = carrier
        self._exchange = exchange
        self._conn = conn
        self._head = head
        self._plan = plan
        # How an answer is relayed: a refused upgrade's closes the connection (what the
        # client sent after its head may already be the new protocol's).
        self._forward = plan if type(plan) is ForwardPlan else ForwardPlan(
            plan.target, plan.fields, close=True)
        self._written = written
        self._request: Request | None = None
        self._reply: Reply | None = None
        self._status = 0
        self._out: list[bytes] = []
        self._wrote = False  # something of the answer has been written to the client
        self._sent_at = 0.0

    def start(self) -> None:
        exchange, conn, plan = self._exchange, self._conn, self._plan
        body = exchange.body if exchange.has_body and type(plan) is ForwardPlan else None
        if body is not None and body.error is not None:
            # A body llhttp refused before anything went upstream: the request is refused
            # whole, as if its head had been malformed.
            self._carrier.refuse(conn, "the request is malformed")
            self._end(400, False, counted=False)
            return
        if type(plan) is ForwardPlan and plan.expect:
            conn.write(CONTINUE)
        self._sent_at = time.perf_counter()
        try:
            self._request = self._carrier.pool.send(self, self._head.method, plan.target,
                                                    plan.fields, body)
        except UpstreamError as exc:
            self.answer_failed(exc)
            return
        exchange.stop = self._request.cancel
        conn.relay = self._request

    # --- the upstream's answer (upstream.Sink) -----------------------------------------

    def answer_head(self, status: int, reason: bytes, raw_headers: list[Field],
                    names: list[bytes], framing: str) -> None:
        carrier, head = self._carrier, self._head
        carrier.counts.observe_upstream(time.perf_counter() - self._sent_at)
        plan = self._forward
        if self._exchange.ends:
            plan = plan._replace(close=True)  # a trailer said so (Planner.trailer_ends)
        reply = self._reply = carrier.planner.respond(head, plan, status, raw_headers, names,
                                                      framing == CHUNKED)
        self._status = status
        written = wire.response_head(status, reason, reply.headers)
        if not reply.body or framing == NONE:
            self._out.append(written + wire.LAST_CHUNK if reply.body and reply.chunked
                             else written)
            if framing != NONE:
                # A body that is not wanted (the answer to HEAD): its connection goes.
                assert self._request is not None
                self._request.cancel()
                self.answer_end()
            else:
                self._reply = reply._replace(body=False)  # (answer_end comes at once)
            return
        self._out.append(written)

    def answer_body(self, data: bytes) -> None:
        reply = self._reply
        assert reply is not None
        if reply.chunked:
            self._out += wire.chunk(data)
        else:
            self._out.append(data)

    def flush(self) -> None:
        if self._out:
            self._conn.writelines(self._out)
            self._out = []
            self._wrote = True

    def answer_end(self) -> None:
        reply, conn, exchange = self._reply, self._conn, self._exchange
        assert reply is not None
        out = self._out
        if reply.body and reply.chunked:
            out.append(wire.LAST_CHUNK)
        if out:
            conn.writelines(out)
        # The next request, or the connection's end. A request body the upstream did not
        # wait for is read and dropped.
        if reply.close or conn.lost:
            conn.finish()
            keep = False
        elif exchange.complete:
            keep = True
        elif exchange.body.error is not None:
            conn.abort()
            keep = False
        else:
            exchange.body.drop()
            keep = True
        self._end(self._status, keep, counted=True)

    def answer_failed(self, error: UpstreamError) -> None:
        carrier, exchange, conn = self._carrier, self._exchange, self._conn
        body = exchange.body if exchange.has_body else None
        if body is not None and body.error is not None:
            conn.abort()  # the client's body broke off: nothing to answer
            self._end(0, False, counted=False)
            return
        if self._reply is None or not self._wrote:
            # Nothing of the answer is out yet: the client gets the 502 or 504.
            own = carrier.planner.failed(error, self._plan) if self._reply is None else \
                carrier.planner.broken(error, head_written=False)
            assert own is not None
            self._out = []
            self._end(own.status, carrier.own(exchange, conn, own, self._head),
                      counted=type(self._plan) is ForwardPlan)
            return
        carrier.planner.broken(error, head_written=True)
        conn.abort()
        self._end(self._status, False, counted=True)

    def answer_switched(self, reason: bytes, raw_headers: list[Field], names: list[bytes],
                        upstream: UpstreamConnection, rest: Chunks) -> None:
        carrier, conn = self._carrier, self._conn
        if type(self._plan) is not Upgrade:
            upstream.drop()
            self.answer_failed(UpstreamError("upstream_unavailable",
                                             "an upgrade the request did not ask for"))
            return
        carrier.counts.observe_upstream(time.perf_counter() - self._sent_at)
        conn.write(wire.response_head(101, reason, carrier.planner.switched(raw_headers, names)))
        conn.upgraded()
        tunnel = self._exchange.tunnel
        assert tunnel is not None  # the connection made it with the upgrade's head
        conn.tunnel = carrier.tunnels.open(conn, tunnel, upstream, rest)
        self._end(101, True, counted=False)  # a session: the tunnels' gauge counts it

    def _end(self, status: int, keep: bool, *, counted: bool) -> None:
        """The exchange is over; `counted`: as a forwarded request (by its status)."""
        exchange, conn = self._exchange, self._conn
        exchange.stop = None
        conn.relay = None
        if counted:
            self._carrier.counts.count_forwarded(self._head.method, status)
        self._carrier.done(exchange, conn, self._head, status, FORWARDED, self._written, keep)


def _local(head: RequestHead) -> LocalRequest:
    peer = head.peername
    return LocalRequest(head.method, head.target, head.headers,
                        str(peer[0]) if isinstance(peer, tuple) and peer else None)
