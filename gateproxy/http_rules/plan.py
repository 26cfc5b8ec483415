"""Every decision of an exchange, without I/O: a request head in, an action out; an
upstream answer in, a reply out.

The request side, `Planner.plan`: it asks the gate for its verdict and turns it into what
the core carries out (gateproxy/http_rules/actions.py): the gate's 503 with its headers,
a 400 for a bad path or a request no upstream should see, the proxy's own endpoints, a
wait, a WebSocket relay, or the target and headers to forward with, and whether to say
`100 Continue` first. The response side: `respond` (the header lines, the framing, keep
the connection or close it; a status that points at a dependency asks for its probe),
`failed` (an upstream failure before the answer's head: its 502 or 504), `broken` (a
body that breaks off once the answer has started: the connection is aborted, the only
honest signal left), and what happens to request trailers (`trailer_ends`: dropped;
some end the connection). Every answer of the proxy's own already says whether the
connection ends after it. The core decides nothing itself.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from operator import methodcaller
from typing import Final, Protocol

from gateproxy.core import answers
from gateproxy.core.answers import http_date as _date
from gateproxy.core.gate import (
    NOT_FOUND,
    SERVER_OPTIONS,
    BadRequest,
    Forward,
    Guard,
    Own,
    Reject,
    Wait,
)
from gateproxy.core.paths import Rule
from gateproxy.core.runtime import Runtime
from gateproxy.core.watch import UPSTREAM_STATUS
from gateproxy.http_rules import request_checks, rpc
from gateproxy.http_rules.actions import (
    Action,
    Endpoint,
    ForwardPlan,
    Gated,
    Hold,
    Reply,
    RequestHead,
    Upgrade,
)
from gateproxy.http_rules.headers import (
    SWITCH,
    BadField,
    Field,
    client_address,
    forwarded_fields,
    response_fields,
    values,
    without,
)
from gateproxy.upstream.interface import UpstreamError

# Trailer fields that llhttp reads as the connection's (RFC 9110 section 6.5.1 keeps them
# out of trailers).
_CONNECTION_TRAILERS: Final = frozenset({b"connection", b"proxy-connection", b"keep-alive"})
# Answers that never have a body (RFC 9110 sections 15.2, 15.3.5 and 15.4.5).
_NO_BODY: Final = frozenset({204, 304})
_latin_1: Final = methodcaller("decode", "latin-1")
_VERSION_1_0_KEEP: Final = (b"Connection", b"keep-alive")
_CLOSE: Final = (b"Connection", b"close")


def lists(head: RequestHead, name: bytes, token: bytes) -> bool:
    """Whether the header `name` (every line of it, as one list) lists `token`."""
    if name not in head.names:
        return False
    return token in (t.strip().lower() for line in values(head.raw_headers, head.names, name)
                     for t in line.split(b","))


def is_upgrade(head: RequestHead) -> bool:
    """A WebSocket upgrade, whatever else `Connection` lists (`keep-alive, Upgrade`)."""
    return head.method == "GET" and lists(head, b"upgrade", b"websocket") \
        and lists(head, b"connection", b"upgrade")


class Live(Protocol):
    """Where the live gate is: a reload replaces the runtime as a whole
    (gateproxy/serve/node.py)."""

    runtime: Runtime


class Planner:
    """Plans each request with the live gate; a gated request also counts and asks for a
    recheck (`on_reject`), once, when its 503 is planned."""

    def __init__(self, live: Live, on_reject: Callable[[Rule[Guard]], None]) -> None:
        self._live = live
        self._on_reject = on_reject

    # --- the request side ----------------------------------------------------------------

    def plan(self, head: RequestHead, waited: bool = False) -> Action:
        """What to do with `head`; `waited`: after a Hold, which is then not given again."""
        action = self._plan(head, waited)
        if b"expect" not in head.names:
            return action
        # The client waits before it sends its body: the proxy's own answer goes first
        # and ends the connection (the unsent body must not be read as the next request);
        # a forward says `100 Continue` (never before the gate's 503).
        if isinstance(action, Gated):
            return Gated(action.answer.closing())
        if isinstance(action, answers.Answer):
            return action.closing()
        if isinstance(action, ForwardPlan) and head.version == (1, 1):
            if (head.field(b"expect") or b"").lower() != b"100-continue":
                return answers.error("expectation_failed", "only 100-continue is understood",
                                     close=True)
            return action._replace(expect=True)
        return action

    def _plan(self, head: RequestHead, waited: bool) -> Action:
        gate = self._live.runtime.gate
        verdict = gate.decide(head.method, head.target, head, waited)
        names = head.names
        # What llhttp stops at after the head (an upgrade, CONNECT) cannot go on as HTTP
        # on this connection once answered: what follows may be another protocol's.
        if b"connection" in names:
            close = not keeps_alive(head) or head.method == "CONNECT" or (
                b"upgrade" in names and lists(head, b"connection", b"upgrade"))
        else:
            close = head.version < (1, 1) or head.method == "CONNECT"
        if type(verdict) is Forward:
            return self._forward(head, verdict.target, close)
        if type(verdict) is Reject:
            self._on_reject(verdict.rule)
            guard = verdict.rule.target
            field = head.field(b"origin")
            origin = None if field is None else field.decode("latin-1")
            content_type = head.field(b"content-type")
            kind = rpc.protocol(content_type, b"connect-protocol-version" in names,
                                head.target)
            if kind != rpc.PLAIN:
                not_ready = guard.status.dep.not_ready
                return Gated(rpc.gated(kind, content_type, not_ready.grpc_code,
                                       not_ready.message, gate.retry_after_s(guard),
                                       gate.cors(origin), close))
            written = gate.rejection_headers(guard, origin)
            return Gated(answers.Answer(503, tuple(written), guard.body, close))
        if type(verdict) is Wait:
            dep = verdict.guard.status.dep
            return Hold(verdict.guard.monitor, verdict.timeout_s, verdict.hold,
                        dep.hold_max_requests, dep.name)
        if type(verdict) is BadRequest:
            return answers.error("bad_request", verdict.message, close=close)
        assert type(verdict) is Own
        if verdict.endpoint == NOT_FOUND:
            return answers.error("not_found", "no such endpoint of the proxy", close=close)
        if verdict.endpoint == SERVER_OPTIONS:
            options = answers.server_options(answers.ALLOW)
            return options.closing() if close else options
        return Endpoint(verdict.endpoint, close)

    @staticmethod
    def _forward(head: RequestHead, target: str, close: bool) -> Action:
        # After the gate (a gated path gets its 503 whatever else is wrong), before the
        # upstream: what llhttp accepts but would make the two of us disagree.
        names = head.names
        problem = request_checks.problem(
            head.version, list(map(_latin_1, values(head.raw_headers, names, b"host")))
            if b"host" in names else [], head.target, b"transfer-encoding" in names)
        if problem is not None:
            return problem.closing() if close else problem
        upgrade = b"upgrade" in names and is_upgrade(head)
        try:
            fields = forwarded_fields(head.raw_headers, names, client_address(head.peername),
                                      head.tls)
        except BadField as exc:
            return answers.error("bad_request", str(exc), close=close or upgrade)
        if names and names[0] != b"host" and b"host" in names:
            _host_first(fields)
        if upgrade:
            if not _valid_handshake(head):
                return answers.error("bad_request", "invalid WebSocket handshake", close=True)
            # The handshake's own hop-by-hop lines, for the upstream to switch too.
            fields += ((b"Connection", b"Upgrade"), (b"Upgrade", head.field(b"upgrade") or b""))
            return Upgrade(target, fields)
        return ForwardPlan(target, fields, close)

    @staticmethod
    def trailer_ends(name: bytes) -> bool:
        """Whether a request trailer field ends the client connection after its request's
        answer. Every trailer field is dropped: the upstream request is framed anew, and no
        trailer becomes a header of anything (docs/headers.md). One that llhttp acts on
        (`Connection`) ends the connection, and nothing after it is read."""
        return name.lower() in _CONNECTION_TRAILERS

    # --- the response side ---------------------------------------------------------------

    def respond(self, head: RequestHead, plan: ForwardPlan, status: int,
                raw: list[Field], names: list[bytes], chunked_in: bool) -> Reply:
        """How the upstream's answer to `plan` goes to the client (docs/headers.md,
        "Responses"); a status some dependency rechecks on asks for its probe now."""
        gate = self._live.runtime.gate
        if status in gate.recheck_statuses:
            for guard in gate.covering(head.method, plan.target, status):
                guard.monitor.request_recheck(UPSTREAM_STATUS)
        fields, kept = response_fields(raw, names)
        close = plan.close
        bodyless = head.method == "HEAD" or status in _NO_BODY or status < 200
        if b"content-length" in kept and (chunked_in or status in _NO_BODY or status < 200):
            # llhttp framed it by its chunks; or an answer that never has a body.
            fields, kept = without(fields, kept, b"content-length")
        length = b"content-length" in kept
        chunked = False
        if bodyless or length or head.version < (1, 1):
            if b"transfer-encoding" in kept:
                fields, kept = without(fields, kept, b"transfer-encoding")
            if not bodyless and not length:
                close = True  # no chunked framing for HTTP/1.0: the body ends with the connection
        else:
            chunked = True
            if b"transfer-encoding" not in kept:  # else in the upstream's place
                fields.append((b"Transfer-Encoding", b"chunked"))
        # `Date` when the upstream sent none, then the client connection's `Connection`.
        if b"date" not in kept:
            fields.append((b"Date", _date().encode("ascii")))
        if close:
            fields.append(_CLOSE)
        elif head.version < (1, 1):
            fields.append(_VERSION_1_0_KEEP)
        return Reply(fields, not bodyless, chunked, close)

    @staticmethod
    def switched(raw: list[Field], names: list[bytes]) -> list[Field]:
        """The header lines of the upstream's 101 for the client: as sent, `Connection`
        and `Upgrade` included (the switch is both hops'), other hop-by-hop lines out,
        `Via` added."""
        return response_fields(raw, names, SWITCH)[0]

    @staticmethod
    def failed(error: UpstreamError, plan: ForwardPlan | Upgrade) -> answers.Answer:
        """The answer to a request the upstream did not answer: 502 or 504 (a failed
        handshake closes: the client's next bytes may be its new protocol's)."""
        close = plan.close if isinstance(plan, ForwardPlan) else True
        return answers.error(error.code, error.message, close=close)

    @staticmethod
    def broken(error: UpstreamError, head_written: bool) -> answers.Answer | None:
        """A body that broke off, either way: the 502 while nothing of the answer is
        out; once it is, None: the connection is aborted, never ended cleanly so that a
        cut body would look complete."""
        return None if head_written else answers.error(error.code, error.message, close=True)

    @staticmethod
    def malformed(why: str) -> answers.Answer:
        """The answer to bytes that are not a request llhttp accepts."""
        return answers.error("bad_request", why, close=True)


def _valid_handshake(head: RequestHead) -> bool:
    """RFC 6455 section 4.2.1: version 13 and a key of 16 bytes in base64, so that the
    upstream is never asked to switch for a request no WebSocket client sends."""
    key = head.field(b"sec-websocket-key") or b""
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid_key = False
    return valid_key and (head.field(b"sec-websocket-version") or b"").strip() == b"13"


def _host_first(fields: list[Field]) -> None:
    """Move the `Host` line first (the planner has made sure there is one only): the writer
    writes it first, as RFC 9110 section 7.2 asks of a client."""
    for i, (name, _) in enumerate(fields):
        if len(name) == 4 and name.lower() == b"host":
            fields.insert(0, fields.pop(i))
            return


def keeps_alive(head: RequestHead) -> bool:
    """Whether the client asked to keep its connection (RFC 9112 section 9.3)."""
    if head.version >= (1, 1):
        return not lists(head, b"connection", b"close")
    return lists(head, b"connection", b"keep-alive")
