"""Bounded recent history for the status page: which state a dependency was in when, how
long its probes took, and how many requests went by per minute.

Each class is pure: the time comes in as an argument or from an injected clock, so the
tests drive them with a fake clock. Each keeps at most the window (an hour) and at most a
fixed number of entries, whatever the rate of events.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 3600.0


@dataclass(frozen=True, slots=True)
class Span:
    state: str
    start: float
    end: float


class StateTimeline:
    """The state changes of one dependency over the window, as spans from one change to
    the next. Beyond `max_changes` the oldest are dropped, and the timeline then starts
    at the oldest one kept."""

    def __init__(self, window_s: float = WINDOW_S, max_changes: int = 1000) -> None:
        self.window_s = window_s
        self._changes: deque[tuple[float, str]] = deque(maxlen=max_changes)

    def record(self, at: float, state: str) -> None:
        if self._changes:
            # A wall clock stepped back must not put a change before the one it follows.
            at = max(at, self._changes[-1][0])
        self._changes.append((at, state))
        self._trim(at)

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        # The last change at or before the horizon stays: it is the state the window opens in.
        while len(self._changes) > 1 and self._changes[1][0] <= horizon:
            self._changes.popleft()

    def start(self, now: float) -> float:
        """Where the picture of the window begins: an hour ago, or the first change known
        if that is later (`now` when nothing is known yet)."""
        self._trim(now)
        first = self._changes[0][0] if self._changes else now
        return max(now - self.window_s, min(first, now))

    def spans(self, now: float) -> list[Span]:
        start = self.start(now)
        changes = list(self._changes)
        if not changes:
            return []
        ends = [at for at, _ in changes[1:]] + [now]
        return [Span(state, max(at, start), min(end, now))
                for (at, state), end in zip(changes, ends, strict=True)
                if min(end, now) > max(at, start)]


@dataclass(slots=True)
class ProbePoint:
    at: float  # when the last of the probes it stands for ended
    duration_ms: int  # the slowest of them
    ok: bool  # false if any of them failed

    def merge(self, other: ProbePoint) -> None:
        self.at = max(self.at, other.at)
        self.duration_ms = max(self.duration_ms, other.duration_ms)
        self.ok = self.ok and other.ok


class ProbeSeries:
    """Probe durations over the window, at most one point per `resolution_s`: the probes
    that end within one point's slot merge into it. So the whole hour fits in
    `window_s / resolution_s` points at any probe rate (traffic-driven rechecks of a
    dependency that is down come about once a second)."""

    def __init__(self, window_s: float = WINDOW_S, resolution_s: float = 1.0) -> None:
        self.window_s = window_s
        self.resolution_s = resolution_s
        self._points: deque[ProbePoint] = deque(maxlen=int(window_s / resolution_s) + 1)
        self._slot_start = 0.0

    def record(self, at: float, duration_ms: int, ok: bool) -> None:
        point = ProbePoint(at, duration_ms, ok)
        if self._points and at - self._slot_start < self.resolution_s:
            self._points[-1].merge(point)
        else:
            self._slot_start = at
            self._points.append(point)
        self._trim(at)

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self._points and self._points[0].at < horizon:
            self._points.popleft()

    def points(self, start: float, now: float, at_most: int) -> list[ProbePoint]:
        """The points from `start` to `now`, merged further into `at_most` equal slots when
        there are more: what a chart of that width can show."""
        self._trim(now)
        width = (now - start) / at_most
        slots: dict[int, ProbePoint] = {}
        for p in self._points:
            if p.at < start:
                continue
            slot = min(int((p.at - start) / width), at_most - 1) if width > 0 else 0
            if slot in slots:
                slots[slot].merge(p)
            else:
                slots[slot] = ProbePoint(p.at, p.duration_ms, p.ok)
        return list(slots.values())


class MinuteBuckets:
    """Events per minute over the last hour: 60 counters in a ring, no timers. Counting
    reads the clock and adds one; only the first event of a new minute does arithmetic
    (it zeroes the minutes that went by without events)."""

    MINUTES = 60
    __slots__ = ("_clock", "_counts", "_minute", "_next", "_slot")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts = [0] * self.MINUTES
        self._minute = int(clock() // 60)
        self._slot = self._minute % self.MINUTES
        self._next = (self._minute + 1) * 60.0  # when the current minute ends

    def add(self) -> None:
        now = self._clock()
        if now >= self._next:
            self._roll(now)
        self._counts[self._slot] += 1

    def _roll(self, now: float) -> None:
        minute = int(now // 60)
        for passed in range(self._minute + 1, min(minute, self._minute + self.MINUTES) + 1):
            self._counts[passed % self.MINUTES] = 0
        self._minute = minute
        self._slot = minute % self.MINUTES
        self._next = (minute + 1) * 60.0

    def last(self, minutes: int) -> int:
        """Events in the current minute and the `minutes - 1` before it."""
        now = self._clock()
        if now >= self._next:
            self._roll(now)
        return sum(self._counts[(self._minute - i) % self.MINUTES]
                   for i in range(min(minutes, self.MINUTES)))

    def as_dict(self) -> dict[str, int]:
        return {"last5m": self.last(5), "last60m": self.last(60)}
