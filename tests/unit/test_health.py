"""aggregate, the /health body: pure, so each of its three shapes is checked with a fixed
`now` and no server."""

from __future__ import annotations

from typing import Any

import pytest

from gateproxy.core.dependency import DependencyStatus, ProbeError
from gateproxy.views.health import UpstreamHealth, aggregate
from tests.unit.test_status import REFUSED, dep

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
