"""The status page's bounded history (state spans, probe durations, per-minute request
counts) and a dependency's last hour, with a fake clock: no sleeping."""

from __future__ import annotations

import dataclasses

from gateproxy import config
from gateproxy.core.dependency import DependencyStatus, ProbeError
from gateproxy.core.history import MinuteBuckets, ProbePoint, ProbeSeries, Span, StateTimeline


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- MinuteBuckets ----------------------------------------------------------------------

def test_buckets_count_the_current_minute_and_the_ones_before() -> None:
    clock = FakeClock(6000.0)  # the start of a minute
    buckets = MinuteBuckets(clock)
    for _ in range(3):
        buckets.add()
    clock.now += 59.9
    buckets.add()
    assert buckets.as_dict() == {"last5m": 4, "last60m": 4}
    clock.now += 0.1  # the next minute
    assert buckets.last(1) == 0 and buckets.last(2) == 4
    for minute in range(1, 8):  # one event in each of the next 7 minutes
        clock.now = 6000.0 + 60 * minute + 1
        buckets.add()
    # Now in minute 7: minutes 3..7 hold one each; minute 0 (4 events) is 7 minutes back.
    assert buckets.as_dict() == {"last5m": 5, "last60m": 11}


def test_buckets_forget_what_is_older_than_an_hour() -> None:
    clock = FakeClock(0.0)
    buckets = MinuteBuckets(clock)
    buckets.add()
    clock.now = 59 * 60.0 + 30  # minute 59: minute 0 is still in the last 60
    buckets.add()
    assert buckets.last(60) == 2
    clock.now = 60 * 60.0  # minute 60 takes minute 0's bucket
    assert buckets.last(60) == 1
    clock.now += 61 * 60  # a quiet hour and more: every bucket is stale
    assert buckets.as_dict() == {"last5m": 0, "last60m": 0}
    buckets.add()
    assert buckets.as_dict() == {"last5m": 1, "last60m": 1}


def test_buckets_survive_a_long_idle_time_at_once() -> None:
    clock = FakeClock(0.0)
    buckets = MinuteBuckets(clock)
    for _ in range(10):
        buckets.add()
    clock.now = 1e12  # the roll zeroes at most 60 buckets, however long the gap
    buckets.add()
    assert buckets.as_dict() == {"last5m": 1, "last60m": 1}


def test_buckets_read_the_clock_once_per_add_and_do_no_arithmetic_within_a_minute() -> None:
    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return 120.0

    buckets = MinuteBuckets(clock)
    reads = 0
    for _ in range(1000):
        buckets.add()
    assert reads == 1000
    assert buckets.last(1) == 1000


# --- StateTimeline ----------------------------------------------------------------------

def test_timeline_is_empty_until_the_first_change() -> None:
    timeline = StateTimeline()
    assert timeline.spans(100.0) == []
    assert timeline.start(100.0) == 100.0


def test_timeline_spans_run_from_change_to_change_and_the_last_to_now() -> None:
    timeline = StateTimeline(window_s=3600)
    timeline.record(100.0, "up")
    timeline.record(160.0, "down")
    timeline.record(190.0, "up")
    assert timeline.start(200.0) == 100.0
    assert timeline.spans(200.0) == [Span("up", 100.0, 160.0), Span("down", 160.0, 190.0),
                                     Span("up", 190.0, 200.0)]


def test_timeline_keeps_the_state_the_window_opens_in() -> None:
    timeline = StateTimeline(window_s=100)
    timeline.record(0.0, "up")
    timeline.record(10.0, "down")
    timeline.record(50.0, "up")
    # At 130 the window opens at 30, in the middle of the down span that began at 10.
    assert timeline.spans(130.0) == [Span("down", 30.0, 50.0), Span("up", 50.0, 130.0)]
    # Long after the last change the window is one span of its state.
    assert timeline.spans(1000.0) == [Span("up", 900.0, 1000.0)]
    assert timeline.start(1000.0) == 900.0


def test_timeline_is_bounded_in_count_and_starts_at_the_oldest_change_kept() -> None:
    timeline = StateTimeline(window_s=3600, max_changes=10)
    for i in range(100):
        timeline.record(float(i), "up" if i % 2 == 0 else "down")
    spans = timeline.spans(100.0)
    assert len(spans) == 10
    assert timeline.start(100.0) == 90.0 and spans[0] == Span("up", 90.0, 91.0)


def test_timeline_keeps_its_order_when_the_wall_clock_steps_back() -> None:
    timeline = StateTimeline()
    timeline.record(100.0, "up")
    timeline.record(90.0, "down")  # the clock was set back by 10 s
    timeline.record(95.0, "up")
    # Changes made while the clock is behind collapse onto the last time known: no span
    # runs backwards, and the state now is the last one recorded.
    assert timeline.spans(120.0) == [Span("up", 100.0, 120.0)]
    timeline.record(110.0, "down")
    assert timeline.spans(120.0) == [Span("up", 100.0, 110.0), Span("down", 110.0, 120.0)]


# --- ProbeSeries ------------------------------------------------------------------------

def test_probes_within_a_slot_merge_into_the_slowest_and_any_failure() -> None:
    series = ProbeSeries(resolution_s=1.0)
    series.record(10.0, 5, True)
    series.record(10.4, 30, False)
    series.record(10.8, 7, True)
    series.record(11.0, 3, True)  # a new slot
    assert series.points(0.0, 12.0, 300) == [ProbePoint(10.8, 30, False),
                                             ProbePoint(11.0, 3, True)]


def test_probes_keep_the_last_hour_at_most_one_point_per_slot() -> None:
    series = ProbeSeries(window_s=3600, resolution_s=1.0)
    now = 0.0
    for i in range(2 * 3600 * 5):  # five probes a second for two hours
        now = i / 5
        series.record(now, i % 7, True)
    points = series.points(now - 3600, now, 10_000)
    assert 3599 <= len(points) <= 3601
    assert points[0].at >= now - 3600 and points[-1].at == now
    assert len(series._points) <= 3601


def test_probe_points_merge_further_to_what_a_chart_shows() -> None:
    series = ProbeSeries(resolution_s=1.0)
    for i in range(100):
        series.record(float(i), i, i != 42)
    points = series.points(0.0, 100.0, 10)
    assert len(points) == 10
    assert [p.duration_ms for p in points] == [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]
    assert [p.ok for p in points] == [True] * 4 + [False] + [True] * 5
    # From a later start only the points after it count.
    assert [p.duration_ms for p in series.points(95.0, 100.0, 300)] == [95, 96, 97, 98, 99]


def test_old_probes_leave_the_window() -> None:
    series = ProbeSeries(window_s=60, resolution_s=1.0)
    series.record(0.0, 1, True)
    series.record(30.0, 2, True)
    assert [p.duration_ms for p in series.points(0.0, 70.0, 300)] == [2]


# --- a dependency's last hour -----------------------------------------------------------

def test_last_hour_of_a_dependency() -> None:
    dep = dataclasses.replace(config.load(None, {}).dependencies[0], healthy_threshold=1,
                              unhealthy_threshold=1)
    status = DependencyStatus(dep)
    assert status.last_hour(1000.0) == {"from": "1970-01-01T00:16:40.000Z", "spans": [],
                                        "probes": []}
    status.record_success(1000.0, 4)
    status.record_success(1010.0, 6)
    status.record_failure(1020.0, 500, ProbeError("timeout", "took too long"))
    status.record_success(1030.5, 3)
    hour = status.last_hour(1040.0)
    assert hour["from"] == "1970-01-01T00:16:40.000Z"
    assert hour["spans"] == [{"state": "up", "startS": 0.0, "endS": 20.0},
                             {"state": "down", "startS": 20.0, "endS": 30.5},
                             {"state": "up", "startS": 30.5, "endS": 40.0}]
    assert hour["probes"] == [{"atS": 0.0, "durationMs": 4, "ok": True},
                              {"atS": 10.0, "durationMs": 6, "ok": True},
                              {"atS": 20.0, "durationMs": 500, "ok": False},
                              {"atS": 30.5, "durationMs": 3, "ok": True}]
    # Two hours on, the window holds the last state only, and no probe.
    later = status.last_hour(1030.5 + 7200)
    assert later["spans"] == [{"state": "up", "startS": 0.0, "endS": 3600.0}]
    assert later["probes"] == []
