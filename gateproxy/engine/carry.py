"""`Carrier`: carries one exchange out, as the planner says (gateproxy/http_rules/plan.py).

Per request: plan it; wait if the plan says so and plan again; then write the proxy's
own answer, have an endpoint answer, forward it (its body streamed up as it comes, the
answer's body streamed down at the client's pace), or, for a WebSocket, send the
handshake and, after the upstream's 101, relay bytes both ways
(gateproxy/engine/tunnel.py). What to write and whether the connection goes on is the
planner's word each time; the carrier only moves bytes and counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

from gateproxy import logs
from gateproxy.core import answers
from gateproxy.core.answers import Answer, http_date
from gateproxy.engine import wire
from gateproxy.engine.connection import Connection
from gateproxy.engine.exchange import Exchange
from gateproxy.engine.tunnel import Tunnels
from gateproxy.engine.upstream import CHUNKED, NONE, Pool
from gateproxy.engine.upstream import Answer as UpstreamAnswer
from gateproxy.http_rules.actions import (
    Action,
    Endpoint,
    EndpointHandler,
    ForwardPlan,
    Gated,
    Hold,
    LocalRequest,
    RequestHead,
    Upgrade,
)
from gateproxy.http_rules.plan import Planner
from gateproxy.logs import FORWARDED, GATED, LOCAL
from gateproxy.upstream.interface import UpstreamError

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_RECENT_MAX = 64  # distinct 503s whose bytes are kept (one a guard, Retry-After and origin)


class Counts(Protocol):
    """What the carrier counts (gateproxy/views/metrics.py, through the gateway)."""

    def count_forwarded(self, method: str, status: int) -> None: ...

    def count_hold(self, dependency: str, outcome: str) -> None: ...

    def observe_upstream(self, seconds: float) -> None: ...

    def access_log(self) -> bool:
        """Whether each request gets an access-log line (read per request: live)."""


class Carrier:
    """Carries exchanges out for every connection of the proxy's port."""

    def __init__(self, planner: Planner, pool: Pool, endpoints: Mapping[str, EndpointHandler],
                 counts: Counts, tunnels: Tunnels) -> None:
        self._planner = planner
        self._pool = pool
        self._endpoints = endpoints
        self._counts = counts
        self.tunnels = tunnels
        self._recent: dict[tuple[Answer, bool, bool], tuple[str, bytes]] = {}

    async def carry(self, exchange: Exchange, conn: Connection) -> bool:
        if exchange.refusal is not None:
            self.refuse(conn, exchange.refusal)
            return False
        planner = self._planner
        head = exchange.head(conn.peername, conn.tls)
        written = conn.written
        action = planner.plan(head)
        if isinstance(action, Hold):
            action = await self._hold(head, action)
        if isinstance(action, ForwardPlan):
            status, keep = await self._forward(exchange, conn, head, action)
            outcome = FORWARDED
        elif isinstance(action, Upgrade):
            status, keep = await self._upgrade(exchange, conn, head, action)
            outcome = FORWARDED
        elif isinstance(action, Gated):
            status, outcome = action.answer.status, GATED
            keep = self._own(exchange, conn, action.answer, head, kept=True)
        else:
            if isinstance(action, Endpoint):
                answer = await self._endpoints[action.name](_local(head))
                if action.close:
                    answer = answer.closing()
            else:
                assert isinstance(action, Answer)
                answer = action
            status, outcome = answer.status, LOCAL
            keep = self._own(exchange, conn, answer, head)
        if self._counts.access_log():
            logs.access(head.method, head.target, status, conn.loop.time() - exchange.started,
                        outcome, conn.written - written, _local(head).peer)
        return keep

    # --- the proxy's own answers ------------------------------------------------------

    def _own(self, exchange: Exchange, conn: Connection, answer: Answer, head: RequestHead,
             *, kept: bool = False) -> bool:
        """Write `answer`; `kept`: from the bytes kept for it (the gate's 503, written
        again and again under load; an endpoint's answer is new each time)."""
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
        conn.linger(answers.render(self._planner.malformed(why), http_date()))

    def time_out(self, conn: Connection) -> None:
        conn.linger(answers.error_bytes(
            "request_timeout", f"the request head did not arrive within "
            f"{round(conn.site.limits.head_timeout_s * 1000)} ms"))

    def trailer_ends(self, name: bytes) -> bool:
        return self._planner.trailer_ends(name)

    # --- waiting ----------------------------------------------------------------------

    async def _hold(self, head: RequestHead, hold: Hold) -> Action:
        """Wait as the plan says, then plan again: a first probe's answer is worth a
        short wait; a held request waits up to hold_ms for its dependency to come back."""
        planner = self._planner
        if not hold.hold:
            await hold.watch.wait_change(hold.timeout_s)
            return planner.plan(head, waited=True)
        try:
            held = await hold.watch.hold(hold.timeout_s, hold.limit)
        except asyncio.CancelledError:  # the client went away: its slot is free again
            self._counts.count_hold(hold.dependency, "cancelled")
            raise
        action = planner.plan(head, waited=True)
        if held:
            self._counts.count_hold(hold.dependency, "timed_out" if type(action) is Gated
                                    else "forwarded")
        return action

    # --- forwarding -------------------------------------------------------------------

    async def _forward(self, exchange: Exchange, conn: Connection, head: RequestHead,
                       plan: ForwardPlan) -> tuple[int, bool]:
        planner = self._planner
        body = exchange.body if exchange.has_body else None
        if body is not None and body.error is not None:
            # A body llhttp refused before anything went upstream: the request is refused
            # whole, as if its head had been malformed.
            self.refuse(conn, "the request is malformed")
            return 400, False
        if plan.expect:
            conn.write(CONTINUE)
        started = time.perf_counter()
        try:
            answer = await self._pool.send(head.method, plan.target, plan.headers, body)
        except UpstreamError as exc:
            if body is not None and body.error is not None:
                conn.abort()  # the client's body broke off: nothing to answer
                return 0, False
            own = planner.failed(exc, plan)
            self._counts.count_forwarded(head.method, own.status)
            return own.status, self._own(exchange, conn, own, head)
        self._counts.observe_upstream(time.perf_counter() - started)
        try:
            return answer.status, await self._relay(exchange, conn, head, plan, answer)
        finally:
            answer.close()  # a no-op once released

    async def _relay(self, exchange: Exchange, conn: Connection, head: RequestHead,
                     plan: ForwardPlan, answer: UpstreamAnswer) -> bool:
        planner = self._planner
        upstream_body = answer.body
        if upstream_body.error is not None:
            # Broken before anything was written: llhttp refused the answer's first bytes.
            error = _upstream_error(upstream_body.error)
            own = planner.broken(error, head_written=False)
            if own is not None:
                self._counts.count_forwarded(head.method, own.status)
                return self._own(exchange, conn, own, head)
        if exchange.ends:
            plan = plan._replace(close=True)  # a trailer said so (Planner.trailer_ends)
        reply = planner.respond(head, plan, answer.status, answer.raw_headers,
                                answer.framing == CHUNKED)
        self._counts.count_forwarded(head.method, answer.status)
        written = wire.response_head(answer.status, answer.reason, reply.headers)
        if not reply.body or answer.framing == NONE:
            conn.write(written + wire.LAST_CHUNK if reply.body and reply.chunked else written)
            if answer.framing != NONE:
                answer.close()  # a body that is not wanted (the answer to HEAD)
            else:
                answer.release()
            return self._next(exchange, conn, reply.close)
        whole = upstream_body.whole()
        if whole is not None:  # the usual small answer: head and body in one write
            if reply.chunked:
                conn.writelines((written, *wire.chunk(whole), wire.LAST_CHUNK) if whole
                                else (written, wire.LAST_CHUNK))
            else:
                conn.writelines((written, whole))
            answer.release()
            return self._next(exchange, conn, reply.close)
        conn.write(written)
        drain = conn.drain
        try:
            while chunk := await upstream_body.read():
                if conn.lost:
                    return False
                if reply.chunked:
                    conn.writelines(wire.chunk(chunk))
                else:
                    conn.write(chunk)
                if drain.paused:
                    await drain.wait()
        except UpstreamError as exc:
            planner.broken(exc, head_written=True)
            conn.abort()
            return False
        if reply.chunked:
            conn.write(wire.LAST_CHUNK)
        answer.release()
        return self._next(exchange, conn, reply.close)

    @staticmethod
    def _next(exchange: Exchange, conn: Connection, close: bool) -> bool:
        """After an answer: the next request, or the connection's end. A request body
        the upstream did not wait for is read and dropped."""
        if close or conn.lost:
            conn.finish()
            return False
        if not exchange.complete:
            if exchange.body.error is not None:
                conn.abort()
                return False
            exchange.body.drop()
        return True

    # --- WebSockets -------------------------------------------------------------------

    async def _upgrade(self, exchange: Exchange, conn: Connection, head: RequestHead,
                       plan: Upgrade) -> tuple[int, bool]:
        planner = self._planner
        try:
            answer = await self._pool.send(head.method, plan.target, plan.headers, None)
        except UpstreamError as exc:
            own = planner.failed(exc, plan)
            return own.status, self._own(exchange, conn, own, head)
        if not answer.upgraded:
            # Refused: the upstream's answer, and the connection ends (what the client
            # sent after its head may already be the new protocol's).
            forward = ForwardPlan(plan.target, plan.headers, close=True)
            try:
                await self._relay(exchange, conn, head, forward, answer)
            finally:
                answer.close()
            return answer.status, False
        conn.write(wire.response_head(101, answer.reason, planner.switched(answer.raw_headers)))
        conn.upgraded()
        upstream = answer.detach()
        conn.tunnel = self.tunnels.open(conn, exchange.tunnel, upstream, answer.body)
        return 101, True


def _local(head: RequestHead) -> LocalRequest:
    peer = head.peername
    return LocalRequest(head.method, head.target, head.headers,
                        str(peer[0]) if isinstance(peer, tuple) and peer else None)


def _upstream_error(exc: BaseException) -> UpstreamError:
    return exc if isinstance(exc, UpstreamError) else UpstreamError(
        "upstream_unavailable", f"the upstream broke off: {exc}")
