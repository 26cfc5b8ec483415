"""The one request path's decisions, without I/O: a request head in, an action out.

`Planner.plan` asks the gate for its verdict and turns it into what both mechanics carry
out (gateproxy/http_rules/actions.py): the gate's 503 with its headers, a 400 for a bad
path or a request no upstream should see, the proxy's own endpoints, a wait, a WebSocket
relay, or the target and headers to forward with. Neither mechanic decides anything of
its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from multidict import CIMultiDictProxy

from gateproxy.core import answers
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
from gateproxy.http_rules import request_checks
from gateproxy.http_rules.actions import (
    Action,
    Endpoint,
    ForwardPlan,
    Gated,
    Hold,
    RequestHead,
    Upgrade,
)
from gateproxy.http_rules.headers import BadField, client_address, forwarded_headers

# Headers aiohttp's WebSocket handshake makes itself, for each hop.
HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-accept",
                       "sec-websocket-protocol", "sec-websocket-extensions"})


def is_upgrade(method: str, headers: Mapping[str, str]) -> bool:
    """A WebSocket upgrade, whatever else `Connection` lists (`keep-alive, Upgrade`)."""
    upgrade = headers.get("Upgrade")
    if upgrade is None or method != "GET":
        return False
    if "websocket" not in (t.strip().lower() for t in upgrade.split(",")):
        return False
    connection = headers.get("Connection", "")
    return "upgrade" in (t.strip().lower() for t in connection.split(","))


_ends_connection = request_checks.ends_connection


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

    def plan(self, head: RequestHead, waited: bool = False) -> Action:
        """What to do with `head`; `waited`: after a Hold, which is then not given again."""
        gate = self._gate()
        headers = head.headers
        verdict = gate.decide(head.method, head.target, headers, waited)
        # A request whose body came with a Transfer-Encoding ends its connection
        # (request_checks.ends_connection), whatever the answer.
        close = _ends_connection(headers)
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
        # upstream: what aiohttp's parser accepts but would make the two of us disagree.
        problem = request_checks.problem(head.version, head.headers.get("Host"), head.target)
        if problem is not None:
            return problem.closing() if close else problem
        upgrade = "Upgrade" in head.headers and is_upgrade(head.method, head.headers)
        try:
            headers = forwarded_headers(head.raw_headers, _connection(head.headers),
                                        client_address(head.peername), head.tls,
                                        HANDSHAKE if upgrade else
                                        frozenset())
        except BadField as exc:
            return answers.error("bad_request", str(exc), close=close or upgrade)
        if upgrade:
            return Upgrade(target, headers)
        return ForwardPlan(target, headers, close)
