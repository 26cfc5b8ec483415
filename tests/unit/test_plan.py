"""Every decision of an exchange (gateproxy/http_rules/plan.py), without sockets: a request
head in, an action out; an upstream answer in, a reply out. Each is checked against what
the core then writes or sends, so that the core has nothing left to decide."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from multidict import CIMultiDict

from gateproxy.core import answers
from gateproxy.core.gate import HEALTH, Gate
from gateproxy.core.paths import Rule
from gateproxy.http_rules import request_checks
from gateproxy.http_rules.actions import (
    Endpoint,
    ForwardPlan,
    Gated,
    Hold,
    RequestHead,
    Upgrade,
)
from gateproxy.http_rules.plan import Planner
from gateproxy.upstream.interface import UpstreamError
from tests.support.gates import make_gate


def head(target: str, method: str = "GET", *headers: tuple[str, str],
         version: tuple[int, int] = (1, 1)) -> RequestHead:
    raw = tuple((k.encode(), v.encode()) for k, v in (("Host", "platform.test"), *headers))
    return RequestHead(method, target, version, raw, [k.lower() for k, _ in raw],
                       ("198.51.100.7", 5555), False)


def text(fields: list[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """Header lines as the assertions read them."""
    return CIMultiDict((name.decode(), value.decode()) for name, value in fields)


class Live:
    """The planner's view of a node: the runtime with the gate under test."""

    def __init__(self, gate: Gate) -> None:
        self.runtime = SimpleNamespace(gate=gate)


def planner(gate: Gate) -> tuple[Planner, list[str]]:
    rejected: list[str] = []

    def on_reject(rule: Rule[object]) -> None:
        rejected.append(rule.prefix)

    return Planner(Live(gate), on_reject), rejected  # type: ignore[arg-type]


def test_a_plain_request_is_forwarded_with_the_rules_headers() -> None:
    plan, rejected = planner(make_gate("down"))
    action = plan.plan(head("/api/threads?x=1", "GET", ("Connection", "X-Drop"),
                            ("X-Drop", "1"), ("X-Keep", "2")))
    assert isinstance(action, ForwardPlan) and not action.close
    assert action.target == "/api/threads?x=1"
    assert list(text(action.fields).items()) == [
        ("Host", "platform.test"), ("X-Keep", "2"), ("X-Forwarded-For", "198.51.100.7"),
        ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "platform.test"),
        ("Via", "1.1 gateproxy")]
    assert rejected == []


def test_a_gated_request_gets_the_503_once_counted() -> None:
    plan, rejected = planner(make_gate("down", allow_origins=frozenset({"https://ui.test"})))
    action = plan.plan(head("/api/containers/x", "DELETE", ("Origin", "https://ui.test")))
    assert isinstance(action, Gated)
    answer = action.answer
    assert answer.status == 503 and answer.body == b'{"error":"not ready"}'
    names = [name for name, _ in answer.headers]
    assert names == ["Content-Type", "Cache-Control", "Retry-After",
                     "Access-Control-Allow-Origin", "Vary"]
    assert rejected == ["/api/containers"]


def test_the_same_path_is_forwarded_once_the_dependency_is_up() -> None:
    plan, rejected = planner(make_gate("up"))
    assert isinstance(plan.plan(head("/api/containers")), ForwardPlan)
    assert rejected == []


def test_a_first_probe_is_waited_for_then_the_plan_is_made_again() -> None:
    plan, rejected = planner(make_gate("unknown"))
    action = plan.plan(head("/api/containers"))
    assert isinstance(action, Hold) and not action.hold
    assert action.dependency == "docker-runner" and action.timeout_s > 0
    assert rejected == []
    again = plan.plan(head("/api/containers"), waited=True)
    assert isinstance(again, Gated) and rejected == ["/api/containers"]


@pytest.mark.parametrize(("target", "code"), [
    ("/a/../../x", "bad_request"), ("/x#frag", "bad_request"),
    ("/_gateproxy/nothing", "not_found")])
def test_the_proxys_own_errors_come_from_the_one_table(target: str, code: str) -> None:
    plan, _ = planner(make_gate("down"))
    action = plan.plan(head(target))
    assert isinstance(action, answers.Answer)
    assert action.status == answers.STATUS[code]
    assert orjson.loads(action.body)["error"]["code"] == code


def test_the_proxys_endpoints_are_planned_for_their_views() -> None:
    plan, _ = planner(make_gate("down"))
    assert plan.plan(head("/health")) == Endpoint(HEALTH)
    assert plan.plan(head("/_gateproxy/status.json")) == Endpoint("status.json")
    assert plan.plan(head("*", "OPTIONS")) == answers.server_options(answers.ALLOW)


WS = (("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade"),
      ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"))


def test_a_websocket_upgrade_goes_upstream_with_the_clients_handshake() -> None:
    plan, _ = planner(make_gate("down"))
    action = plan.plan(head("/ws", "GET", *WS, ("Cookie", "a=1")))
    assert isinstance(action, Upgrade) and action.target == "/ws"
    # Bytes are relayed after the 101: the handshake is the client's, end to end.
    sent = text(action.fields)
    assert sent["Sec-WebSocket-Key"] == "dGhlIHNhbXBsZSBub25jZQ=="
    assert (sent["Connection"], sent["Upgrade"]) == ("Upgrade", "websocket")
    assert sent["Cookie"] == "a=1"


@pytest.mark.parametrize("bad", [("Sec-WebSocket-Key", "short"),
                                 ("Sec-WebSocket-Version", "8")])
def test_a_handshake_no_websocket_client_sends_is_the_proxys_400(bad: tuple[str, str]
                                                                ) -> None:
    plan, _ = planner(make_gate("down"))
    headers = [h for h in WS if h[0] != bad[0]] + [bad]
    action = plan.plan(head("/ws", "GET", *headers))
    assert isinstance(action, answers.Answer) and action.status == 400 and action.close


def test_an_upgrades_own_answer_ends_the_connection() -> None:
    """llhttp stops after an upgrade's head: what follows may be another protocol's."""
    plan, _ = planner(make_gate("down"))
    gated = plan.plan(head("/api/containers/c/ws", "GET", *WS))
    assert isinstance(gated, Gated) and gated.answer.close
    connect = plan.plan(head("platform.test:443", "CONNECT"))
    assert isinstance(connect, answers.Answer) and connect.close


def test_a_chunked_request_keeps_its_connection() -> None:
    """Trailers are parsed as trailers: nothing of them can reach the next request."""
    plan, _ = planner(make_gate("down"))
    chunked = ("Transfer-Encoding", "chunked")
    forward = plan.plan(head("/api/threads", "POST", chunked))
    assert isinstance(forward, ForwardPlan) and not forward.close
    gated = plan.plan(head("/api/containers", "POST", chunked))
    assert isinstance(gated, Gated) and not gated.answer.close
    assert plan.plan(head("/health", "GET", chunked)) == Endpoint(HEALTH)


@pytest.mark.parametrize(("name", "ends"), [(b"Connection", True), (b"keep-alive", True),
                                            (b"X-Checksum", False), (b"Host", False)])
def test_a_trailer_is_dropped_and_a_connection_one_ends_the_connection(name: bytes,
                                                                       ends: bool) -> None:
    plan, _ = planner(make_gate("down"))
    assert plan.trailer_ends(name) is ends


def test_expect_100_continue_is_said_before_a_forward_never_before_the_503() -> None:
    plan, _ = planner(make_gate("down"))
    expect = ("Expect", "100-continue")
    forward = plan.plan(head("/api/threads", "POST", expect, ("Content-Length", "3")))
    assert isinstance(forward, ForwardPlan) and forward.expect
    gated = plan.plan(head("/api/containers", "POST", expect, ("Content-Length", "3")))
    assert isinstance(gated, Gated) and gated.answer.close  # the unsent body is never read
    other = plan.plan(head("/api/threads", "POST", ("Expect", "tea")))
    assert isinstance(other, answers.Answer) and other.status == 417 and other.close


@pytest.mark.parametrize(("version", "connection", "keeps"), [
    ((1, 1), None, True), ((1, 1), "close", False), ((1, 0), None, False),
    ((1, 0), "keep-alive", True)])
def test_keep_alive_is_the_clients_word(version: tuple[int, int], connection: str | None,
                                        keeps: bool) -> None:
    plan, _ = planner(make_gate("down"))
    extra = (("Connection", connection),) if connection else ()
    action = plan.plan(head("/api/threads", "GET", *extra, version=version))
    assert isinstance(action, ForwardPlan) and action.close is not keeps


RAW = ((b"Content-Type", b"text/plain"), (b"Connection", b"close, X-Hop"), (b"X-Hop", b"1"))


@pytest.mark.parametrize(("method", "version", "status", "framing", "body", "chunked", "close"),
                         [("GET", (1, 1), 200, (b"Content-Length", b"3"), True, False, False),
                          ("GET", (1, 1), 200, (b"Transfer-Encoding", b"chunked"), True, True,
                           False),
                          ("GET", (1, 1), 200, None, True, True, False),  # until close
                          ("GET", (1, 0), 200, None, True, False, True),
                          ("HEAD", (1, 1), 200, (b"Content-Length", b"3"), False, False, False),
                          ("GET", (1, 1), 204, None, False, False, False),
                          ("GET", (1, 1), 304, (b"Content-Length", b"3"), False, False, False)])
def test_an_answers_framing_and_connection(method: str, version: tuple[int, int], status: int,
                                           framing: tuple[bytes, bytes] | None, body: bool,
                                           chunked: bool, close: bool) -> None:
    plan, _ = planner(make_gate("down"))
    request = head("/api/threads", method, version=version)
    forward = plan.plan(request)
    assert isinstance(forward, ForwardPlan)
    raw = (*RAW, framing) if framing else RAW
    reply = plan.respond(request, forward, status, list(raw), [n.lower() for n, _ in raw],
                         framing == (b"Transfer-Encoding", b"chunked"))
    names = [name.lower() for name, _ in text(reply.headers).items()]
    assert (reply.body, reply.chunked, reply.close) == (body, chunked, close)
    assert "x-hop" not in names  # named in the upstream's Connection: its hop only
    assert names.count("via") == 1 and "date" in names
    assert ("transfer-encoding" in names) is chunked
    assert ("content-length" in names) is (framing == (b"Content-Length", b"3")
                                           and status != 304)
    connection = text(reply.headers).get("connection")
    assert connection == ("close" if close else "keep-alive" if version < (1, 1) else None)


def test_an_upstream_failure_and_a_broken_body_are_answered_or_aborted() -> None:
    plan, _ = planner(make_gate("down"))
    forward = plan.plan(head("/api/threads"))
    assert isinstance(forward, ForwardPlan)
    error = UpstreamError("upstream_timeout", "no response from the upstream within 5 ms")
    assert plan.failed(error, forward).status == 504
    assert plan.broken(error, head_written=False) is not None
    assert plan.broken(error, head_written=True) is None  # abort: never a clean end


def test_a_header_that_is_not_utf8_is_refused_not_re_encoded() -> None:
    plan, _ = planner(make_gate("down"))
    raw = head("/api/threads")
    bad = RequestHead(raw.method, raw.target, raw.version,
                      (*raw.raw_headers, (b"X-A", b"\x85\x93\xa0")), [*raw.names, b"x-a"],
                      raw.peername, raw.tls)
    action = plan.plan(bad)
    assert isinstance(action, answers.Answer) and action.status == 400


# --- the request checks, on their own ---------------------------------------------------

@pytest.mark.parametrize(("version", "host", "target", "code"), [
    ((2, 0), "platform.test", "/", "http_version_not_supported"),
    ((1, 1), "bad host!", "/", "bad_request"),
    ((1, 1), "platform.test", "http://user@platform.test/x", "bad_request"),
    ((1, 1), "platform.test", "http://elsewhere.test/x", "bad_request"),
])
def test_requests_no_upstream_should_see(version: tuple[int, int], host: str, target: str,
                                         code: str) -> None:
    answer = request_checks.problem(version, [host], target)
    assert answer is not None
    assert orjson.loads(answer.body)["error"]["code"] == code
    assert answer.status == answers.STATUS[code]


@pytest.mark.parametrize(("host", "target"), [
    ("platform.test", "/x"), ("platform.test:80", "http://platform.test/x"),
    ("PLATFORM.test", "http://platform.TEST:80/x"), ("[::1]:8080", "/x")])
def test_requests_that_pass_the_checks(host: str, target: str) -> None:
    assert request_checks.problem((1, 1), [host], target) is None
    assert request_checks.problem((1, 0), [], target) is None  # HTTP/1.0 needs no Host


def test_an_http11_request_without_host_or_an_http10_one_with_a_transfer_encoding() -> None:
    assert request_checks.problem((1, 1), [], "/x") is not None
    refused = request_checks.problem((1, 0), [], "/x", transfer_encoding=True)
    assert refused is not None and refused.close


def test_two_host_headers_are_refused() -> None:
    """llhttp passes them; which one an upstream reads is its own affair."""
    answer = request_checks.problem((1, 1), ["platform.test", "evil.test"], "/x")
    assert answer is not None and answer.status == 400


def test_headers_named_in_any_of_several_connection_lines_are_not_forwarded() -> None:
    plan, _ = planner(make_gate("down"))
    action = plan.plan(head("/api/threads", "GET", ("Connection", "X-One"),
                            ("Connection", "X-Two"), ("X-One", "1"), ("X-Two", "2"),
                            ("X-Kept", "3")))
    assert isinstance(action, ForwardPlan)
    sent = text(action.fields)
    assert "X-One" not in sent and "X-Two" not in sent
    assert sent["X-Kept"] == "3"
