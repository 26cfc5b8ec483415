"""The upstream's up/down state and one request's retry decision, without sockets or
sleeps (gateproxy/core/upstream_state.py)."""

from __future__ import annotations

from gateproxy.core.upstream_state import (
    DOWN,
    UP,
    Patience,
    Recovery,
    UpstreamState,
    retry_cap_ms,
)


def test_a_refusal_turns_it_down_once_and_the_first_success_up_with_how_long() -> None:
    state = UpstreamState(wall=1000.0)
    assert state.up and state.since == 1000.0 and state.last_error is None
    assert state.failed(10.0, 1001.0, "connection_refused", "refused") is True
    assert state.state == DOWN and state.since == 1001.0
    assert state.failed(10.1, 1001.1, "connection_reset", "reset") is False  # still down
    assert state.since == 1001.0 and state.last_error == ("connection_reset", "reset")
    assert state.succeeded(12.5, 1003.5) == Recovery(2.5)
    assert state.state == UP and state.since == 1003.5
    assert state.succeeded(13.0, 1004.0) is None  # already up: nothing recovered
    assert state.last_error == ("connection_reset", "reset")  # kept for the status page


def test_attempts_while_down_back_off_25_ms_doubling_to_400_ms_and_start_again() -> None:
    state = UpstreamState(wall=0.0)
    gaps = []
    for _ in range(7):
        state.failed(100.0, 0.0, "connection_refused", "refused")
        gaps.append(round((state.next_attempt_at - 100.0) * 1000))
    assert gaps == [25, 50, 100, 200, 400, 400, 400]
    state.succeeded(101.0, 1.0)
    state.failed(200.0, 2.0, "connection_refused", "refused")
    assert round((state.next_attempt_at - 200.0) * 1000) == 25


def test_restarts_are_the_times_it_went_down_in_the_last_hour() -> None:
    state = UpstreamState(wall=0.0)
    for wall in (10.0, 20.0, 3000.0):
        state.failed(wall, wall, "connection_refused", "refused")
        state.failed(wall, wall + 1, "connection_refused", "refused")  # the same outage
        state.succeeded(wall, wall + 2)
    assert state.restarts(3500.0) == 3
    assert state.restarts(3615.0) == 2  # the first is more than an hour old
    assert state.restarts(3625.0) == 1


def test_a_request_waits_for_the_next_attempt_within_its_deadline_then_gives_up() -> None:
    patience = Patience(started=10.0, budget_s=3.0)
    assert patience.wait_s(10.0, next_attempt_at=0.0) == 0.0  # due: attempt now
    assert patience.wait_s(10.5, next_attempt_at=10.75) == 0.25
    assert patience.left_s(12.0) == 1.0
    # An attempt the schedule puts at or past the deadline is not waited for.
    assert patience.wait_s(12.8, next_attempt_at=13.2) is None
    assert patience.wait_s(13.0, next_attempt_at=0.0) is None
    assert patience.left_s(14.0) == 0.0


def test_a_short_retry_connect_ms_caps_the_backoff_at_half_of_it() -> None:
    """So that a request that waits 200 ms still sees an attempt: with 400 ms between
    attempts, one arriving just after a failure would give up without any."""
    assert retry_cap_ms(3000) == 400
    assert retry_cap_ms(200) == 100
    state = UpstreamState(wall=0.0, max_retry_ms=retry_cap_ms(200))
    for _ in range(5):
        state.failed(10.0, 0.0, "connection_refused", "refused")
    assert round((state.next_attempt_at - 10.0) * 1000) == 100
    # Arriving just after that failure, the request waits for the next attempt.
    assert Patience(started=10.0, budget_s=0.2).wait_s(10.0, state.next_attempt_at) is not None
