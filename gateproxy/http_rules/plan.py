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
from collections.abc import Callable, Mapping
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from gateproxy.core import answers
from gateproxy.core.answers import http_date as _date
from gateproxy.core.gate import (
    NOT_FOUND,
    SERVER_OPTIONS,
    BadRequest,
    Forward,
    Gate,
    Guard,
    Own,
    Reject,
    Wait,
)
from gateproxy.core.paths import Rule
from gateproxy.core.watch import UPSTREAM_STATUS
from gateproxy.http_rules import request_checks
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
    BadField,
    client_address,
    forwarded_headers,
    response_headers,
    switched_headers,
)
from gateproxy.upstream.interface import RawHeaders, UpstreamError

# Trailer fields that llhttp reads as the connection's (RFC 9110 section 6.5.1 keeps them
# out of trailers).
_CONNECTION_TRAILERS: Final = frozenset({b"connection", b"proxy-connection", b"keep-alive"})
# Answers that never have a body (RFC 9110 sections 15.2, 15.3.5 and 15.4.5).
_NO_BODY: Final = frozenset({204, 304})


def is_upgrade(method: str, headers: Mapping[str, str]) -> bool:
    """A WebSocket upgrade, whatever else `Connection` lists (`keep-alive, Upgrade`)."""
    upgrade = headers.get("Upgrade")
    if upgrade is None or method != "GET":
        return False
    if "websocket" not in (t.strip().lower() for t in upgrade.split(",")):
        return False
    connection = headers.get("Connection", "")
    return "upgrade" in (t.strip().lower() for t in connection.split(","))


def _connection(headers: CIMultiDictProxy[str]) -> str | None:
    """Every `Connection` line as one list (RFC 9110 section 5.3)."""
    values = headers.getall("Connection", None)
    if values is None:
        return None
    return values[0] if len(values) == 1 else ", ".join(values)


class Planner:
    """Plans each request with the live gate; a gated request also counts and asks for a
    recheck (`on_reject`), once, when its 503 is planned."""

    def __init__(self, gate: Callable[[], Gate],
                 on_reject: Callable[[Rule[Guard]], None]) -> None:
        self._gate = gate  # the live gate: a reload replaces it
        self._on_reject = on_reject

    # --- the request side ----------------------------------------------------------------

    def plan(self, head: RequestHead, waited: bool = False) -> Action:
        """What to do with `head`; `waited`: after a Hold, which is then not given again."""
        action = self._plan(head, waited)
        if "Expect" not in head.headers:
            return action
        # The client waits before it sends its body: the proxy's own answer goes first
        # and ends the connection (the unsent body must not be read as the next request);
        # a forward says `100 Continue` (never before the gate's 503).
        if isinstance(action, Gated):
            return Gated(action.answer.closing())
        if isinstance(action, answers.Answer):
            return action.closing()
        if isinstance(action, ForwardPlan) and head.version == (1, 1):
            if head.headers["Expect"].lower() != "100-continue":
                return answers.error("expectation_failed", "only 100-continue is understood",
                                     close=True)
            return action._replace(expect=True)
        return action

    def _plan(self, head: RequestHead, waited: bool) -> Action:
        gate = self._gate()
        headers = head.headers
        verdict = gate.decide(head.method, head.target, headers, waited)
        # What llhttp stops at after the head (an upgrade, CONNECT) cannot go on as HTTP
        # on this connection once answered: what follows may be another protocol's.
        close = not keeps_alive(head) or head.method == "CONNECT" or (
            "Upgrade" in headers and _connection_lists(headers, "upgrade"))
        if type(verdict) is Forward:
            return self._forward(head, verdict.target, close)
        if type(verdict) is Reject:
            self._on_reject(verdict.rule)
            guard = verdict.rule.target
            written = gate.rejection_headers(guard, headers.get("Origin"))
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
        problem = request_checks.problem(head.version, head.headers.getall("Host", ()),
                                         head.target, "Transfer-Encoding" in head.headers)
        if problem is not None:
            return problem.closing() if close else problem
        upgrade = "Upgrade" in head.headers and is_upgrade(head.method, head.headers)
        try:
            headers = forwarded_headers(head.raw_headers, _connection(head.headers),
                                        client_address(head.peername), head.tls)
        except BadField as exc:
            return answers.error("bad_request", str(exc), close=close or upgrade)
        if upgrade:
            if not _valid_handshake(head.headers):
                return answers.error("bad_request", "invalid WebSocket handshake", close=True)
            # The handshake's own hop-by-hop lines, for the upstream to switch too.
            headers["Connection"] = "Upgrade"
            headers["Upgrade"] = head.headers["Upgrade"]
            return Upgrade(target, headers)
        return ForwardPlan(target, headers, close)

    @staticmethod
    def trailer_ends(name: bytes) -> bool:
        """Whether a request trailer field ends the client connection after its request's
        answer. Every trailer field is dropped: the upstream request is framed anew, and no
        trailer becomes a header of anything (docs/headers.md). One that llhttp acts on
        (`Connection`) ends the connection, and nothing after it is read."""
        return name.lower() in _CONNECTION_TRAILERS

    # --- the response side ---------------------------------------------------------------

    def respond(self, head: RequestHead, plan: ForwardPlan, status: int,
                raw: RawHeaders | list[tuple[bytes, bytes]], chunked_in: bool) -> Reply:
        """How the upstream's answer to `plan` goes to the client (docs/headers.md,
        "Responses"); a status some dependency rechecks on asks for its probe now."""
        gate = self._gate()
        if status in gate.recheck_statuses:
            for guard in gate.covering(head.method, plan.target, status):
                guard.monitor.request_recheck(UPSTREAM_STATUS)
        headers = response_headers(raw)
        close = plan.close
        bodyless = head.method == "HEAD" or status in _NO_BODY or status < 200
        if status in _NO_BODY or status < 200:
            headers.popall("Content-Length", None)
        if chunked_in:
            headers.popall("Content-Length", None)  # llhttp framed it by its chunks
        chunked = False
        if bodyless or "Content-Length" in headers:
            headers.popall("Transfer-Encoding", None)
        elif head.version < (1, 1):
            # No chunked framing for HTTP/1.0: the body ends with the connection.
            headers.popall("Transfer-Encoding", None)
            close = True
        else:
            chunked = True
            headers["Transfer-Encoding"] = "chunked"  # in the upstream's place, or last
        return Reply(_finished(headers, head.version, close), not bodyless, chunked, close)

    @staticmethod
    def switched(raw: RawHeaders | list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
        """The header lines of the upstream's 101 for the client: as sent, `Connection`
        and `Upgrade` included (the switch is both hops'), other hop-by-hop lines out,
        `Via` added."""
        return list(switched_headers(raw).items())

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


def _valid_handshake(headers: CIMultiDictProxy[str]) -> bool:
    """RFC 6455 section 4.2.1: version 13 and a key of 16 bytes in base64, so that the
    upstream is never asked to switch for a request no WebSocket client sends."""
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid_key = False
    return valid_key and headers.get("Sec-WebSocket-Version", "").strip() == "13"


def _connection_lists(headers: CIMultiDictProxy[str], token: str) -> bool:
    connection = _connection(headers)
    return connection is not None and token in (
        t.strip().lower() for t in connection.split(","))


def keeps_alive(head: RequestHead) -> bool:
    """Whether the client asked to keep its connection (RFC 9112 section 9.3)."""
    if head.version >= (1, 1):
        return not _connection_lists(head.headers, "close")
    return _connection_lists(head.headers, "keep-alive")


def _finished(headers: CIMultiDict[str], version: tuple[int, int],
              close: bool) -> list[tuple[str, str]]:
    """`Date` when the upstream sent none, then the client connection's own
    `Connection`."""
    if "Date" not in headers:
        headers["Date"] = _date()
    if close:
        headers["Connection"] = "close"
    elif version < (1, 1):
        headers["Connection"] = "keep-alive"
    return list(headers.items())
