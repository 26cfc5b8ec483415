"""The gate's one decision (`Gate.decide`), as a pure function: no sockets, no sleeping.

These judge the decision by what docs/gate.md promises; tests/hostile/test_router_oracle.py judges
it by what real Fastify, Express and WHATWG-parser routers make of the forwarded target.
"""

from __future__ import annotations

import pytest

from gateproxy.core.dependency import Maintenance
from gateproxy.core.gate import (
    HEALTH,
    NOT_FOUND,
    SERVER_OPTIONS,
    BadRequest,
    Forward,
    Gate,
    Own,
    Reject,
    Verdict,
    Wait,
)
from tests.support.gates import make_gate

DOWN = make_gate("down")


def decide(target: str, method: str = "GET", gate: Gate = DOWN, **headers: str) -> Verdict:
    return gate.decide(method, target, headers)


@pytest.mark.parametrize(("target", "sent"), [
    ("/api/threads/1?x=%2F", "/api/threads/1?x=%2F"),
    ("/api//threads/./1/", "/api/threads/1/"),
    ("/api/%74hreads/%2e%2e/graph?q=/../", "/api/graph?q=/../"),
    ("http://platform.test/api/graph?x", "/api/graph?x"),
    ("http://platform.test", "/"),
    ("/API/Threads/%2F/%7e", "/API/Threads/%2F/~"),
])
def test_forwarded_target_is_the_judged_one(target: str, sent: str) -> None:
    assert decide(target) == Forward(sent)


@pytest.mark.parametrize("target", ["/#/api/containers", "/x#frag", "/api/threads?x=1#y",
                                    "/#", "/api/containers#", "http://h/a#b"])
def test_a_fragment_is_a_bad_request_whatever_the_path(target: str) -> None:
    assert isinstance(decide(target), BadRequest)
    assert isinstance(decide(target, gate=make_gate("up")), BadRequest)


def test_the_asterisk_form_is_the_proxys_own_for_options_only() -> None:
    assert decide("*", "OPTIONS") == Own(SERVER_OPTIONS)
    assert isinstance(decide("*", "GET"), BadRequest)
    assert isinstance(decide("*", "POST"), BadRequest)


def test_a_target_in_normal_form_is_forwarded_as_the_same_string() -> None:
    target = "/api/threads/abc?q=1"
    verdict = decide(target)
    assert isinstance(verdict, Forward) and verdict.target is target


@pytest.mark.parametrize("target", [
    "/api/containers", "/api/containers/", "/api/containers/x", "/api/%63ontainers/x",
    "http://h/api/containers/x", "/API/CONTAINERS/x", "/x/../api/containers",
    "/api/containers/x/..", "//api//containers", "/api/containers/%2e", "/api%2Fcontainers",
    "/api\\containers", "/api;v=1/containers", "/a/..%2F..%2Fapi/containers",
])
def test_gated_spellings_are_rejected_while_down(target: str) -> None:
    verdict = decide(target, "DELETE")
    assert isinstance(verdict, Reject), target
    assert verdict.rule.prefix == "/api/containers"


# The spellings issue 10 found reaching Fastify's `/api/containers/:containerId` handlers:
# forwarded in the form judged, they name no gated route to any router.
@pytest.mark.parametrize(("target", "sent"), [
    ("/api/containers/..", "/api/"),
    ("/api/containers/%2e%2e", "/api/"),
    ("/api/containers/.%2E", "/api/"),
    ("/api/containers/%2E.", "/api/"),
    ("/api/containers/..?x=1", "/api/?x=1"),
    ("/api/containers/../events", "/api/events"),
    ("/api/%63ontainers/%2e%2e", "/api/"),
    ("http://h/api/containers/..", "/api/"),
    ("/API/CONTAINERS/..", "/API/"),
    ("/api/containers//..", "/api/"),
    ("/api/containers/../..", "/"),
])
def test_dot_segments_that_leave_the_prefix_are_forwarded_resolved(target: str,
                                                                   sent: str) -> None:
    assert decide(target, "DELETE") == Forward(sent)


def test_methods_and_preflights() -> None:
    assert isinstance(decide("/test/workspaces", "POST"), Reject)
    assert decide("/test/workspaces", "GET") == Forward("/test/workspaces")
    preflight = decide("/api/containers", "OPTIONS", **{"Access-Control-Request-Method": "GET"})
    assert preflight == Forward("/api/containers")
    assert isinstance(decide("/api/containers", "OPTIONS"), Reject)


def test_nothing_is_rejected_while_up_and_unknown_waits() -> None:
    up, unknown = make_gate("up"), make_gate("unknown")
    assert decide("/api/containers/%2e%2e", gate=up) == Forward("/api/")
    verdict = decide("/api/containers/x", gate=unknown)
    assert isinstance(verdict, Wait) and verdict.guard is unknown.guards[0]


@pytest.mark.parametrize("target", ["/a/../..", "/api/containers%00", "/a/%0A", "x", "/a\x7f"])
def test_bad_paths_are_bad_requests_whatever_the_state(target: str) -> None:
    assert isinstance(decide(target), BadRequest)
    assert isinstance(decide(target, gate=make_gate("up")), BadRequest)


@pytest.mark.parametrize(("target", "method", "endpoint"), [
    ("/health", "GET", HEALTH), ("/health", "HEAD", HEALTH), ("/x/../health", "GET", HEALTH),
    ("/_gateproxy/live", "GET", "live"), ("/_gateproxy/status.json", "HEAD", "status.json"),
    ("/_gateproxy//metrics", "GET", "metrics"),
    ("/_gateproxy", "GET", NOT_FOUND), ("/_gateproxy/", "GET", NOT_FOUND),
    ("/_gateproxy/nope", "GET", NOT_FOUND), ("/_GateProxy/live", "GET", "live"),
    ("/_gateproxy/live", "POST", NOT_FOUND), ("/x/%2e%2e/_gateproxy/api", "GET", NOT_FOUND),
    ("/_gateproxy/../_gateproxy/x?y", "DELETE", NOT_FOUND),
])
def test_the_proxy_keeps_its_own_paths(target: str, method: str, endpoint: str) -> None:
    assert decide(target, method) == Own(endpoint)


def test_other_methods_on_the_health_path_are_forwarded() -> None:
    assert decide("/health", "POST") == Forward("/health")


def test_with_an_admin_port_the_prefix_is_an_ordinary_path() -> None:
    gate = make_gate("down", admin_port=9901)
    assert decide("/_gateproxy/live", gate=gate) == Forward("/_gateproxy/live")


def test_a_prefix_lookalike_is_not_the_admin_prefix() -> None:
    assert decide("/_gateproxyx/live") == Forward("/_gateproxyx/live")


@pytest.mark.parametrize("state", ["up", "down", "unknown"])
def test_maintenance_closes_the_gated_routes_whatever_the_probes_say(state: str) -> None:
    gate = make_gate(state, hold_ms=3000)
    status = gate.guards[0].status
    status.set_maintenance(Maintenance(5.0, "upgrade"))
    verdict = decide("/api/containers/x", gate=gate)
    assert isinstance(verdict, Reject) and verdict.rule.prefix == "/api/containers"
    assert decide("/api/threads", gate=gate) == Forward("/api/threads")
    status.set_maintenance(None)
    after = decide("/api/containers/x", gate=gate)
    assert {"up": Forward, "down": Wait, "unknown": Wait}[state] is type(after)


def test_a_down_dependency_with_hold_ms_holds_then_rejects_after_the_wait() -> None:
    gate = make_gate("down", hold_ms=3000)
    verdict = decide("/api/containers/x", gate=gate)
    assert verdict == Wait(gate.guards[0], hold=True) and verdict.timeout_s == 3.0
    waited = gate.decide("GET", "/api/containers/x", {}, waited=True)
    assert isinstance(waited, Reject)
    assert decide("/api/threads", gate=gate) == Forward("/api/threads")
    # Without hold_ms, or with probing given up, the 503 comes at once.
    assert isinstance(decide("/api/containers/x"), Reject)
    gate.guards[0].status.retries_exhausted = True
    assert isinstance(decide("/api/containers/x", gate=gate), Reject)


def test_a_first_probe_is_waited_for_once() -> None:
    unknown = make_gate("unknown")
    verdict = decide("/api/containers/x", gate=unknown)
    assert verdict == Wait(unknown.guards[0]) and verdict.timeout_s == 2.0
    assert isinstance(unknown.decide("GET", "/api/containers/x", {}, waited=True), Reject)


def test_covering_names_the_dependency_of_a_gated_route_that_is_up() -> None:
    up = make_gate("up")
    guard = up.guards[0]
    assert up.recheck_statuses == {502, 503, 504}
    assert up.covering("GET", "/api/containers/x?y", 503) == [guard]
    assert up.covering("DELETE", "/API/Containers", 502) == [guard]
    assert up.covering("GET", "/api/containers/x", 500) == []  # not in recheck_on_status
    assert up.covering("GET", "/api/threads", 503) == []  # not a gated route
    assert up.covering("GET", "/test/workspaces", 503) == []  # POST only
    assert up.covering("POST", "/test/workspaces", 503) == [guard]
    assert DOWN.covering("GET", "/api/containers/x", 503) == []  # already down


@pytest.mark.parametrize("method", ["POST", "DELETE", "GET"])
def test_maintenance_paths_on_the_proxy_port_are_not_found_without_an_admin_port(
        method: str) -> None:
    path = "/_gateproxy/dependencies/docker-runner/maintenance"
    assert decide(path, method) == Own(NOT_FOUND)
    assert decide(path, method, gate=make_gate("down", admin_port=9901)) == Forward(path)
