"""The one request path's decisions (gateproxy/http_rules/plan.py), without sockets: a
request head in, an action out. Each action is checked against what the mechanics then
write or send, so that the two mechanics have nothing left to decide."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

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
from tests.support.gates import make_gate


def head(target: str, method: str = "GET", *headers: tuple[str, str],
         version: tuple[int, int] = (1, 1)) -> RequestHead:
    raw = (("Host", "platform.test"), *headers)
    return RequestHead(method, target, version, CIMultiDictProxy(CIMultiDict(raw)),
                       tuple((k.encode(), v.encode()) for k, v in raw),
                       ("198.51.100.7", 5555), False)


def planner(gate: Gate) -> tuple[Planner, list[str]]:
    rejected: list[str] = []

    def on_reject(rule: Rule[object]) -> None:
        rejected.append(rule.prefix)

    return Planner(lambda: gate, on_reject), rejected  # type: ignore[arg-type]


def test_a_plain_request_is_forwarded_with_the_rules_headers() -> None:
    plan, rejected = planner(make_gate("down"))
    action = plan.plan(head("/api/threads?x=1", "GET", ("Connection", "X-Drop"),
                            ("X-Drop", "1"), ("X-Keep", "2")))
    assert isinstance(action, ForwardPlan) and not action.close
    assert action.target == "/api/threads?x=1"
    assert list(action.headers.items()) == [
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


def test_a_websocket_upgrade_is_relayed_without_the_handshakes_own_headers() -> None:
    plan, _ = planner(make_gate("down"))
    action = plan.plan(head("/ws", "GET", ("Upgrade", "websocket"),
                            ("Connection", "keep-alive, Upgrade"),
                            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                            ("Sec-WebSocket-Version", "13"), ("Cookie", "a=1")))
    assert isinstance(action, Upgrade) and action.target == "/ws"
    assert "Sec-WebSocket-Key" not in action.headers
    assert action.headers["Cookie"] == "a=1"


def test_a_chunked_request_ends_its_connection_whatever_the_answer() -> None:
    plan, _ = planner(make_gate("down"))
    chunked = ("Transfer-Encoding", "chunked")
    forward = plan.plan(head("/api/threads", "POST", chunked))
    assert isinstance(forward, ForwardPlan) and forward.close
    gated = plan.plan(head("/api/containers", "POST", chunked))
    assert isinstance(gated, Gated) and gated.answer.close
    own = plan.plan(head("/health", "GET", chunked))
    assert own == Endpoint(HEALTH, close=True)


def test_a_header_that_is_not_utf8_is_refused_not_re_encoded() -> None:
    plan, _ = planner(make_gate("down"))
    raw = head("/api/threads")
    bad = RequestHead(raw.method, raw.target, raw.version, raw.headers,
                      (*raw.raw_headers, (b"X-A", b"\x85\x93\xa0")), raw.peername, raw.tls)
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
    answer = request_checks.problem(version, host, target)
    assert answer is not None
    assert orjson.loads(answer.body)["error"]["code"] == code
    assert answer.status == answers.STATUS[code]


@pytest.mark.parametrize(("host", "target"), [
    ("platform.test", "/x"), ("platform.test:80", "http://platform.test/x"),
    ("PLATFORM.test", "http://platform.TEST:80/x"), ("[::1]:8080", "/x"), (None, "/x")])
def test_requests_that_pass_the_checks(host: str | None, target: str) -> None:
    assert request_checks.problem((1, 1), host, target) is None


def test_only_a_request_with_a_transfer_encoding_ends_its_connection() -> None:
    assert request_checks.ends_connection({"Transfer-Encoding": "chunked"})
    assert not request_checks.ends_connection({"Content-Length": "3"})


def test_headers_named_in_any_of_several_connection_lines_are_not_forwarded() -> None:
    plan, _ = planner(make_gate("down"))
    action = plan.plan(head("/api/threads", "GET", ("Connection", "X-One"),
                            ("Connection", "X-Two"), ("X-One", "1"), ("X-Two", "2"),
                            ("X-Kept", "3")))
    assert isinstance(action, ForwardPlan)
    assert "X-One" not in action.headers and "X-Two" not in action.headers
    assert action.headers["X-Kept"] == "3"
