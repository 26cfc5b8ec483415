"""The dependency state machine, with a fake clock and seeded randomness: no sleeping."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gateproxy.core.backoff import retry_delay_ms
from gateproxy.core.dependency import ERROR_NAME, DependencyStatus, ProbeError, State, is_retryable
from gateproxy.monitor.grpc_probe import status_error
from tests.support.dependency_states import REFUSED, dep


def test_delay_sequence_without_jitter_doubles_up_to_the_cap() -> None:
    status = DependencyStatus(dep(base_delay_ms=500, max_delay_ms=30000, jitter_ms=0))
    delays = [status.record_failure(100.0 + i, 3, REFUSED).next_delay_ms for i in range(9)]
    assert delays == [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]


def test_jitter_is_uniform_in_the_closed_range_and_seeded() -> None:
    retry = dep(base_delay_ms=500, max_delay_ms=30000, jitter_ms=250).retry
    draws = [retry_delay_ms(1, retry.base_delay_ms, retry.max_delay_ms, retry.jitter_ms,
                            random.Random(seed)) for seed in range(400)]
    assert min(draws) == 500 and max(draws) == 750
    assert len(set(draws)) > 100
    again = [retry_delay_ms(1, retry.base_delay_ms, retry.max_delay_ms, retry.jitter_ms,
                            random.Random(seed)) for seed in range(400)]
    assert draws == again


def test_huge_failure_counts_do_not_overflow() -> None:
    retry = dep(base_delay_ms=500, max_delay_ms=30000, jitter_ms=0).retry
    assert retry_delay_ms(10_000, retry.base_delay_ms, retry.max_delay_ms, retry.jitter_ms,
                          random.Random(1)) == 30000


def test_unknown_then_first_result_decides() -> None:
    up = DependencyStatus(dep(healthy_threshold=3))
    assert up.state is State.UNKNOWN
    outcome = up.record_success(10.0, 5)
    assert up.state is State.UP and outcome.transition is not None
    assert outcome.next_delay_ms == up.dep.probe_interval_ms
    down = DependencyStatus(dep(unhealthy_threshold=3))
    down.record_failure(10.0, 5, REFUSED)
    assert down.state is State.DOWN


def test_thresholds_damp_flapping() -> None:
    status = DependencyStatus(dep(healthy_threshold=2, unhealthy_threshold=3, jitter_ms=0))
    status.record_success(0.0, 1)
    assert status.state is State.UP
    status.record_failure(1.0, 1, REFUSED)
    status.record_failure(2.0, 1, REFUSED)
    assert status.state is State.UP, "two failures are below the threshold of three"
    status.record_success(3.0, 1)
    status.record_failure(4.0, 1, REFUSED)
    status.record_failure(5.0, 1, REFUSED)
    assert status.state is State.UP, "a success in between resets the count"
    outcome = status.record_failure(6.0, 1, REFUSED)
    assert status.state is State.DOWN and outcome.transition is not None
    status.record_success(7.0, 1)
    assert status.state is State.DOWN, "one success is below the threshold of two"
    status.record_failure(8.0, 1, REFUSED)
    status.record_success(9.0, 1)
    assert status.state is State.DOWN, "a failure in between resets the count"
    outcome = status.record_success(10.0, 1)
    assert status.state is State.UP
    assert outcome.transition is not None and outcome.transition.down_for_ms == 4000


def test_max_retries_exhausts_once_and_stops_scheduling() -> None:
    status = DependencyStatus(dep(max_retries=2, jitter_ms=0))
    first = status.record_failure(0.0, 1, REFUSED)
    assert first.next_delay_ms == 500 and not first.exhausted
    second = status.record_failure(0.5, 1, REFUSED)
    assert second.exhausted and second.next_delay_ms is None
    assert status.retries_exhausted and status.next_retry_at is None
    assert status.consecutive_failures == 2
    assert status.retry_after_s(1.0) == 30
    status.reconfigure(status.dep)
    assert not status.retries_exhausted and status.consecutive_failures == 0


def test_snapshot_has_the_documented_fields_in_camel_case() -> None:
    status = DependencyStatus(dep(base_url="http://user:pw@runner:7071", jitter_ms=0))
    status.record_failure(1_700_000_000.0, 12, ProbeError("http_503", "no docker", 503))
    snap = status.snapshot()
    assert snap == {
        "status": "down",
        "baseUrl": "http://runner:7071",
        "endpoint": "http://runner:7071/v1/ready",
        "probe": "http",
        "optional": True,
        "since": "2023-11-14T22:13:20.000Z",
        "lastCheckedAt": "2023-11-14T22:13:20.000Z",
        "lastSuccessAt": None,
        "lastFailureAt": "2023-11-14T22:13:20.000Z",
        "lastDurationMs": 12,
        "lastError": {"code": "http_503", "message": "no docker", "statusCode": 503},
        "error": {"name": "DependencyProbeError", "message": "no docker", "statusCode": 503,
                  "errorCode": "http_503", "retryable": True},
        "nextRetryAt": "2023-11-14T22:13:20.500Z",
        "consecutiveFailures": 1,
        "totalChecks": 1,
        "totalFailures": 1,
        "retriesExhausted": False,
        "maintenance": None,
    }
    status.record_success(1_700_000_001.0, 3)
    assert status.snapshot()["lastError"] is None
    assert "error" not in status.snapshot()
    assert status.snapshot()["consecutiveFailures"] == 0


def test_a_grpc_snapshot_has_the_endpoint_beside_the_base_url() -> None:
    status = DependencyStatus(dep(base_url="grpc://runner:50051", probe="grpc"))
    snap = status.snapshot()
    assert (snap["baseUrl"], snap["endpoint"], snap["probe"]) == (
        "grpc://runner:50051", "grpc://runner:50051", "grpc")
    assert list(snap)[:4] == ["status", "baseUrl", "endpoint", "probe"]


@pytest.mark.parametrize(("now", "expected"), [(0.0, 2), (1.2, 1), (1.9, 1), (5.0, 1)])
def test_retry_after_is_whole_seconds_until_the_next_probe(now: float, expected: int) -> None:
    status = DependencyStatus(dep(base_delay_ms=1500, jitter_ms=0))
    status.record_failure(0.0, 1, REFUSED)
    assert status.retry_after_s(now) == expected


def test_transitions_keep_the_last_fifty() -> None:
    status = DependencyStatus(dep(jitter_ms=0))
    for i in range(60):
        status.record_success(float(2 * i), 1)
        status.record_failure(float(2 * i + 1), 1, REFUSED)
    assert len(status.transitions) == 50
    assert status.transitions[-1].new is State.DOWN


# The platform-server's shape of a dependency: `endpoint`, and `error` while failing.

def test_an_http_endpoint_is_the_probe_url_without_credentials() -> None:
    status = DependencyStatus(dep(base_url="https://u:secret@runner.svc:7443",
                                  ready_path="/internal/ready"))
    snap = status.snapshot()
    assert snap["endpoint"] == "https://runner.svc:7443/internal/ready"
    assert "secret" not in orjson.dumps(snap).decode()
    assert list(snap)[:4] == ["status", "baseUrl", "endpoint", "probe"]


def test_no_error_before_the_first_probe_or_after_a_success() -> None:
    status = DependencyStatus(dep())
    assert status.state is State.UNKNOWN and "error" not in status.snapshot()
    status.record_success(1.0, 2)
    assert status.state is State.UP and "error" not in status.snapshot()


def test_error_mirrors_last_error_while_the_last_probe_failed() -> None:
    status = DependencyStatus(dep(unhealthy_threshold=3, jitter_ms=0))
    status.record_success(1.0, 2)
    status.record_failure(2.0, 2, REFUSED)
    snap = status.snapshot()
    assert snap["status"] == "up", "below the threshold: still up, but the probe failed"
    assert snap["error"] == {"name": ERROR_NAME, "message": "refused",
                             "errorCode": "connection_refused", "retryable": True}
    assert snap["error"]["errorCode"] == snap["lastError"]["code"]
    assert "statusCode" not in snap["error"], "no HTTP answer: no statusCode"
    assert ERROR_NAME == "DependencyProbeError"


def test_no_error_while_confirming_a_recovery() -> None:
    status = DependencyStatus(dep(healthy_threshold=2, jitter_ms=0))
    status.record_failure(1.0, 2, REFUSED)
    assert "error" in status.snapshot()
    status.record_success(2.0, 2)
    snap = status.snapshot()
    assert snap["status"] == "down" and snap["lastError"] is not None
    assert "error" not in snap, "the last probe succeeded"
    status.record_failure(3.0, 2, REFUSED)
    assert status.snapshot()["error"]["errorCode"] == "connection_refused"


def test_exhausted_retries_are_not_retryable_until_a_reload_restarts_probing() -> None:
    status = DependencyStatus(dep(max_retries=2, jitter_ms=0))
    status.record_failure(1.0, 2, REFUSED)
    assert status.snapshot()["error"]["retryable"] is True
    status.record_failure(2.0, 2, REFUSED)
    assert status.retries_exhausted
    assert status.snapshot()["error"]["retryable"] is False
    status.reconfigure(status.dep)
    assert status.consecutive_failures == 0
    error = status.snapshot()["error"]
    assert error["retryable"] is True, "the reload probes again"
    assert error["errorCode"] == "connection_refused", "still failing: no probe succeeded"


def _grpc_failure(code: Status) -> ProbeError:
    return status_error(GRPCError(code, "the runner said no"))


@pytest.mark.parametrize(("error", "retryable"), [
    (ProbeError("http_401", "bad signature", 401), False),
    (ProbeError("http_403", "forbidden", 403), False),
    (_grpc_failure(Status.UNAUTHENTICATED), False),
    (_grpc_failure(Status.PERMISSION_DENIED), False),
    (ProbeError("http_503", "no docker", 503), True),
    (ProbeError("http_404", "HTTP 404 Not Found", 404), True),
    (_grpc_failure(Status.UNAVAILABLE), True),
    (_grpc_failure(Status.DEADLINE_EXCEEDED), True),
    (ProbeError("grpc_health_not_serving", "health status NOT_SERVING"), True),
    (ProbeError("timeout", "no answer within 2000 ms"), True),
    (REFUSED, True),
])
def test_configuration_faults_are_not_retryable(error: ProbeError, retryable: bool) -> None:
    probe = "grpc" if error.code.startswith("grpc_") else "http"
    status = DependencyStatus(dep(base_url="grpc://runner:50051", probe="grpc")
                              if probe == "grpc" else dep())
    status.record_failure(1.0, 2, error)
    snap = status.snapshot()
    assert snap["error"]["retryable"] is retryable
    assert snap["error"]["errorCode"] == snap["lastError"]["code"] == error.code
    assert snap["error"].get("statusCode") == error.status_code
    assert ("statusCode" in snap["error"]) is (error.status_code is not None)


def test_the_grpc_codes_are_the_ones_the_grpc_probe_produces() -> None:
    assert _grpc_failure(Status.UNAUTHENTICATED).code == "grpc_unauthenticated"
    assert _grpc_failure(Status.PERMISSION_DENIED).code == "grpc_permission_denied"


def test_retryable_is_a_pure_decision() -> None:
    assert is_retryable("connection_refused", False) is True
    assert is_retryable("connection_refused", True) is False
    assert is_retryable("http_401", False) is False
    assert is_retryable("http_500", False) is True


def _states() -> list[DependencyStatus]:
    """One status in each case the snapshot tells apart."""
    unknown = DependencyStatus(dep())
    up = DependencyStatus(dep())
    up.record_success(1.0, 2)
    down = DependencyStatus(dep(jitter_ms=0))
    down.record_failure(1.0, 2, ProbeError("http_401", "bad signature", 401))
    confirming = DependencyStatus(dep(healthy_threshold=2, jitter_ms=0))
    confirming.record_failure(1.0, 2, REFUSED)
    confirming.record_success(2.0, 2)
    exhausted = DependencyStatus(dep(max_retries=1, jitter_ms=0))
    exhausted.record_failure(1.0, 2, REFUSED)
    reloaded = DependencyStatus(dep(max_retries=1, jitter_ms=0))
    reloaded.record_failure(1.0, 2, REFUSED)
    reloaded.reconfigure(reloaded.dep)
    return [unknown, up, down, confirming, exhausted, reloaded]


@pytest.mark.parametrize("source", _states(), ids=["unknown", "up", "down", "confirming",
                                                   "exhausted", "reloaded"])
def test_a_worker_snapshot_is_the_supervisors(source: DependencyStatus) -> None:
    # Over the control socket the export travels as JSON.
    exported: dict[str, Any] = orjson.loads(orjson.dumps(source.export()))
    worker = DependencyStatus(source.dep)
    worker.mirror(exported)
    assert worker.snapshot() == source.snapshot()
