"""A process's metrics as plain numbers: counters, gauges and histograms, and the snapshot
of them (`Family`, plain lists that orjson writes as they are).

Nothing here imports prometheus_client: a worker of several counts in these and sends
its snapshot to its supervisor, and only the process that answers a scrape writes the
Prometheus text (gateproxy/views/exposition.py). Counting is an index and an add on the
event loop, never a lock.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, Protocol, TypedDict, TypeVar

COUNTER: Final = "counter"
GAUGE: Final = "gauge"
HISTOGRAM: Final = "histogram"
Kind = Literal["counter", "gauge", "histogram"]
# How the supervisor of `workers: N` makes one family of its workers' and its own
# (gateproxy/workers/aggregate.py): the workers' values added up, the lowest of them, or
# the supervisor's own.
SUM: Final = "sum"
LOWEST: Final = "lowest"
SUPERVISOR: Final = "supervisor"
Merge = Literal["sum", "lowest", "supervisor"]
# prometheus-client's default histogram bounds (seconds); +Inf, always the last bucket, is
# left out so that a snapshot is plain JSON.
DEFAULT_BOUNDS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                         5.0, 7.5, 10.0)

# One series: its label values, its value, and when it was first counted (None for a
# gauge). A histogram's value is its counts per bucket (+Inf last; each observation in
# one bucket, not cumulative) and the sum of its observations.
Series = tuple[Sequence[str], Any, float | None]


class Family(TypedDict):
    """One metric family's numbers, as a snapshot; `merge`: with `workers: N`, how the
    supervisor makes one family of it (`SUM`, `LOWEST`, `SUPERVISOR`, above)."""

    name: str
    help: str
    type: Kind
    labels: Sequence[str]
    bounds: Sequence[float]
    merge: Merge
    series: list[Series]


class Source(Protocol):
    def snapshot(self) -> Family: ...


S = TypeVar("S", bound=Source)


class Registry:
    """Every family of one process, in the order they are exported."""

    def __init__(self) -> None:
        self._sources: list[Source] = []

    def add(self, source: S) -> S:
        self._sources.append(source)
        return source

    def snapshot(self) -> list[Family]:
        return [source.snapshot() for source in self._sources]


class Counter:
    """A counter with labels; a series appears when first counted, as
    prometheus-client's does."""

    def __init__(self, name: str, help: str, labels: Sequence[str] = (), *,
                 merge: Merge = SUM) -> None:
        self.name, self.help, self.labels, self.merge = name, help, labels, merge
        # By label values, in the order first counted: [count, when first counted].
        self.series: dict[tuple[str, ...], list[float]] = {}

    def child(self, *values: str) -> list[float]:
        """The series of these label values, [count, created], made if new."""
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = [0, time.time()]
        return series

    def inc(self, *values: str) -> None:
        self.child(*values)[0] += 1

    def snapshot(self) -> Family:
        return family(self, COUNTER, [(k, v[0], v[1]) for k, v in self.series.items()])


class Gauge:
    """A gauge read when a snapshot is taken: `read` gives each series' label values
    and value."""

    def __init__(self, name: str, help: str, labels: Sequence[str],
                 read: Callable[[], Iterable[tuple[Sequence[str], float]]], *,
                 merge: Merge = SUM) -> None:
        self.name, self.help, self.labels, self.merge = name, help, labels, merge
        self._read = read

    def snapshot(self) -> Family:
        return family(self, GAUGE, [(k, v, None) for k, v in self._read()])


class Observations:
    """One histogram series: an observation is a bisect and two adds."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # The first bucket whose bound is at least `value`, as prometheus-client picks.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Histogram:
    def __init__(self, name: str, help: str, labels: Sequence[str] = (), *,
                 bounds: Sequence[float] = DEFAULT_BOUNDS, merge: Merge = SUM) -> None:
        self.name, self.help, self.labels, self.merge = name, help, labels, merge
        self.bounds = bounds
        self.series: dict[tuple[str, ...], Observations] = {}

    def child(self, *values: str) -> Observations:
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = Observations(self.bounds)
        return series

    def snapshot(self) -> Family:
        return family(self, HISTOGRAM, [(k, (o.counts, o.sum), o.created)
                                        for k, o in self.series.items()], self.bounds)


class Described(Protocol):
    name: str
    help: str
    labels: Sequence[str]
    merge: Merge


def family(described: Described, kind: Kind, series: list[Series],
           bounds: Sequence[float] = ()) -> Family:
    """A snapshot of `described` with these series."""
    return Family(name=described.name, help=described.help, type=kind,
                  labels=described.labels, bounds=bounds, merge=described.merge,
                  series=series)
