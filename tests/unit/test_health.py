"""/health's bodies, pure: `aggregate` (each of its three shapes), `health_json` (the IETF
draft form: pass, warn, fail) and `wants_health_json` (the Accept negotiation between the
two), with a fixed `now` and no server."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from gateproxy.core.dependency import DependencyStatus, ProbeError
from gateproxy.views.health import UpstreamHealth, aggregate, health_json, wants_health_json
from tests.support.dependency_states import REFUSED, dep

NOW = 1_700_000_000.123
NOW_ISO = "2023-11-14T22:13:20.123Z"


def runner_down() -> DependencyStatus:
    status = DependencyStatus(dep(jitter_ms=0))
    status.record_failure(NOW - 1, 3, REFUSED)
    return status


@pytest.mark.parametrize(("upstream", "code", "fields"), [
    (UpstreamHealth(200, {"status": "ok"}, None), 200, {"status": "ok"}),
    (UpstreamHealth(200, {"status": "ok", "timestamp": None}, None), 200, {"status": "ok"}),
    (UpstreamHealth(200, None, None), 200,
     {"status": "ok", "upstream": {"status": "up", "statusCode": 200}}),
    (UpstreamHealth(502, ["not", "an", "object"], None), 502,
     {"status": "error", "upstream": {"status": "error", "statusCode": 502}}),
    (UpstreamHealth(None, None, {"code": "upstream_timeout", "message": "no answer"}), 503,
     {"status": "error",
      "upstream": {"status": "down", "error": {"code": "upstream_timeout",
                                               "message": "no answer"}}}),
], ids=["object", "object-null-timestamp", "not-json", "not-an-object", "unreachable"])
def test_every_shape_has_a_timestamp_from_now(upstream: UpstreamHealth, code: int,
                                              fields: dict[str, Any]) -> None:
    status = runner_down()
    got_code, body = aggregate(upstream, [status], NOW)
    assert got_code == code
    assert body["timestamp"] == NOW_ISO
    assert {k: body[k] for k in fields} == fields
    assert body["dependencies"]["dockerRunner"] == status.snapshot()
    assert list(body)[:2] == ["status", "timestamp"]


def test_the_upstreams_own_timestamp_is_kept() -> None:
    upstream = UpstreamHealth(200, {"status": "ok", "timestamp": "2024-05-01T10:00:00.000Z",
                                    "dependencies": {"postgres": {"status": "up"}}}, None)
    code, body = aggregate(upstream, [runner_down()], NOW)
    assert code == 200
    assert body["timestamp"] == "2024-05-01T10:00:00.000Z"
    assert body["dependencies"]["postgres"] == {"status": "up"}


def test_the_time_is_the_argument_not_the_clock() -> None:
    _, body = aggregate(UpstreamHealth(200, {}, None), [], 0.0)
    assert body["timestamp"] == "1970-01-01T00:00:00.000Z"


def test_a_required_dependency_down_keeps_the_timestamp_and_shows_its_error() -> None:
    status = DependencyStatus(dep(optional=False, jitter_ms=0))
    status.record_failure(NOW - 1, 3, ProbeError("http_403", "forbidden", 403))
    code, body = aggregate(UpstreamHealth(200, {"status": "ok"}, None), [status], NOW)
    assert code == 503 and body["status"] == "error"
    assert body["timestamp"] == NOW_ISO
    assert body["dependencies"]["dockerRunner"]["error"] == {
        "name": "DependencyProbeError", "message": "forbidden", "statusCode": 403,
        "errorCode": "http_403", "retryable": False}


def runner_up(**changes: object) -> DependencyStatus:
    status = DependencyStatus(dep(jitter_ms=0, **changes))
    status.record_success(NOW - 2, 12)
    return status


def runner_unknown() -> DependencyStatus:
    return DependencyStatus(dep(jitter_ms=0))


HEALTHY = UpstreamHealth(200, {"status": "ok"}, None)
UNREACHABLE = UpstreamHealth(None, None, {"code": "upstream_unavailable",
                                          "message": "connection refused"})


# --- aggregate: what the dependencies change -------------------------------------------------

def test_an_optional_dependency_down_never_turns_health_into_an_error() -> None:
    code, body = aggregate(HEALTHY, [runner_down()], NOW)
    assert code == 200 and body["status"] == "ok"


def test_a_required_dependency_not_yet_probed_turns_health_into_503() -> None:
    status = DependencyStatus(dep(optional=False, jitter_ms=0))
    code, body = aggregate(HEALTHY, [status], NOW)
    assert code == 503 and body["status"] == "error"


def test_a_required_dependency_down_overrides_a_non_object_answer_too() -> None:
    status = DependencyStatus(dep(optional=False, jitter_ms=0))
    status.record_failure(NOW - 1, 3, REFUSED)
    code, body = aggregate(UpstreamHealth(200, None, None), [status], NOW)
    assert code == 503 and body["status"] == "error"
    assert body["upstream"] == {"status": "up", "statusCode": 200}


def test_the_upstreams_dependencies_are_kept_beside_ours_and_ours_win_a_clash() -> None:
    sent = {"status": "ok", "dependencies": {"postgres": {"status": "up"},
                                             "dockerRunner": {"status": "spoofed"}}}
    status = runner_up()
    _, body = aggregate(UpstreamHealth(200, sent, None), [status], NOW)
    assert body["dependencies"] == {"postgres": {"status": "up"},
                                    "dockerRunner": status.snapshot()}


def test_dependencies_that_are_not_an_object_are_replaced_by_ours() -> None:
    upstream = UpstreamHealth(200, {"status": "ok", "dependencies": ["postgres"]}, None)
    status = runner_up()
    _, body = aggregate(upstream, [status], NOW)
    assert body["dependencies"] == {"dockerRunner": status.snapshot()}


def test_an_object_answer_keeps_the_upstreams_code_and_fields() -> None:
    sent = {"status": "degraded", "version": "1.2.3"}
    code, body = aggregate(UpstreamHealth(500, sent, None), [runner_up()], NOW)
    assert code == 500
    assert (body["status"], body["version"]) == ("degraded", "1.2.3")


def test_the_upstreams_body_is_not_changed_in_place() -> None:
    sent = {"status": "ok", "dependencies": {"postgres": {"status": "up"}}}
    before = copy.deepcopy(sent)
    aggregate(UpstreamHealth(200, sent, None), [runner_down()], NOW)
    assert sent == before


# --- health_json: the IETF draft form ---------------------------------------------------------

def test_everything_up_is_pass() -> None:
    code, body = health_json(HEALTHY, [runner_up()], NOW)
    assert code == 200 and body["status"] == "pass"
    assert [c["status"] for checks in body["checks"].values() for c in checks] == [
        "pass", "pass"]


@pytest.mark.parametrize(("make", "check"), [(runner_down, "fail"), (runner_unknown, "warn")],
                         ids=["down", "not-yet-probed"])
def test_an_optional_dependency_not_up_is_warn(make: Any, check: str) -> None:
    code, body = health_json(HEALTHY, [make()], NOW)
    assert code == 200 and body["status"] == "warn"
    assert body["checks"]["docker-runner:readiness"][0]["status"] == check


@pytest.mark.parametrize("probed", [True, False], ids=["down", "not-yet-probed"])
def test_a_required_dependency_not_up_is_fail(probed: bool) -> None:
    status = DependencyStatus(dep(optional=False, jitter_ms=0))
    if probed:
        status.record_failure(NOW - 1, 3, REFUSED)
    code, body = health_json(HEALTHY, [status], NOW)
    assert code == 503 and body["status"] == "fail"


@pytest.mark.parametrize("upstream", [
    UpstreamHealth(500, {"status": "error"}, None), UpstreamHealth(302, None, None),
    UNREACHABLE], ids=["500", "302", "unreachable"])
def test_an_upstream_that_is_not_healthy_is_fail_whatever_the_dependencies(
        upstream: UpstreamHealth) -> None:
    code, body = health_json(upstream, [runner_up()], NOW)
    assert code == 503 and body["status"] == "fail"
    assert body["checks"]["upstream:health"][0]["status"] == "fail"


@pytest.mark.parametrize("status", [200, 204, 299])
def test_any_2xx_from_the_upstream_passes(status: int) -> None:
    code, body = health_json(UpstreamHealth(status, None, None), [], NOW)
    assert code == 200 and body["status"] == "pass"


def test_the_upstream_check_says_what_was_observed() -> None:
    _, body = health_json(UpstreamHealth(204, None, None), [], NOW)
    assert body["checks"] == {"upstream:health": [{
        "componentType": "system", "status": "pass", "time": NOW_ISO,
        "observedValue": 204, "observedUnit": "HTTP status"}]}


def test_an_unreachable_upstream_says_why_and_observed_nothing() -> None:
    _, body = health_json(UNREACHABLE, [], NOW)
    assert body["checks"]["upstream:health"] == [{
        "componentType": "system", "status": "fail", "time": NOW_ISO,
        "output": "upstream_unavailable: connection refused"}]


def test_a_dependency_check_has_its_probe_facts_and_gated_prefixes() -> None:
    route = dep().gated_routes[0]
    routes = (route, dataclasses.replace(route, prefix="/test/workspaces",
                                         methods=frozenset({"POST"})),
              dataclasses.replace(route, methods=frozenset({"GET"})))
    status = DependencyStatus(dep(jitter_ms=0, gated_routes=routes))
    status.record_failure(NOW - 1, 37, REFUSED)
    _, body = health_json(HEALTHY, [status], NOW)
    assert body["checks"]["docker-runner:readiness"] == [{
        "componentId": "docker-runner", "componentType": "component", "status": "fail",
        "time": "2023-11-14T22:13:19.123Z",
        "affectedEndpoints": ["/api/containers", "/test/workspaces"],
        "observedValue": 37, "observedUnit": "ms",
        "output": "connection_refused: refused"}]


def test_a_dependency_never_probed_is_timed_now_without_observations() -> None:
    _, body = health_json(HEALTHY, [runner_unknown()], NOW)
    check = body["checks"]["docker-runner:readiness"][0]
    assert check["time"] == NOW_ISO
    assert not {"observedValue", "observedUnit", "output"} & set(check)


def test_every_dependency_has_a_check_of_its_own() -> None:
    other = DependencyStatus(dep(name="other-service", health_key="otherService",
                                 jitter_ms=0))
    other.record_success(NOW - 1, 3)
    code, body = health_json(HEALTHY, [runner_down(), other], NOW)
    assert code == 200 and body["status"] == "warn"
    assert list(body["checks"]) == ["upstream:health", "docker-runner:readiness",
                                    "other-service:readiness"]


# --- wants_health_json: the Accept negotiation ---------------------------------------------

@pytest.mark.parametrize(("accept", "wanted"), [
    ("", False),
    ("*/*", False),
    ("application/json", False),
    ("text/html", False),
    ("application/health+json", True),
    ("Application/Health+JSON", True),
    ("application/health+json;q=0", False),
    ("application/health+json;q=nonsense", False),
    # a tie goes to health+json, the more specific type
    ("application/json, application/health+json", True),
    ("application/json;q=0.8, application/health+json;q=0.8", True),
    ("*/*, application/health+json", True),
    # q-values decide
    ("application/health+json;q=0.5, application/json", False),
    ("application/health+json;q=0.9, application/json;q=0.8", True),
    ("application/json;q=0.3, application/health+json ; q=0.7", True),
    ("*/*;q=0.1, application/health+json;q=0.2", True),
    ("*/*, application/health+json;q=0.9", False),
    ("application/*, application/health+json;q=0.5", False),
    ("application/*;q=0.4, application/health+json;q=0.5", True),
    # types that are not JSON do not compete
    ("text/html, application/health+json;q=0.1", True),
    # the best of several entries for the same type counts
    ("application/health+json;q=0.1, application/health+json;q=0.9, application/json;q=0.5",
     True),
    ("application/health+json;level=1;q=0.4, application/json;q=0.5", False),
    # a near miss is not the type
    ("application/health+jsonx", False),
])
def test_health_json_is_served_when_accept_prefers_it(accept: str, wanted: bool) -> None:
    assert wants_health_json(accept) is wanted
