"""The metrics of one Gateway, as plain numbers (gateproxy/views/counts.py), in a registry
of its own.

A registry per Gateway lets several gateways live in one process, as they do in the
tests. The per-request metrics (gated and forwarded requests, upstream latency) are
plain ints in small tables, so a request pays an index and an add, never a lock, a label
lookup or string formatting. A snapshot of them all is what /metrics writes
(gateproxy/views/exposition.py) and what a worker of several sends its supervisor. Gated
and forwarded requests also go into per-minute buckets for the status page (its counts
for the last 5 and 60 minutes): one more add, as cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from gateproxy.core.dependency import DependencyStatus
from gateproxy.core.history import MinuteBuckets
from gateproxy.monitor.probe import ProbeResult
from gateproxy.views.counts import (
    COUNTER,
    LOWEST,
    SUM,
    SUPERVISOR,
    Counter,
    Family,
    Gauge,
    Histogram,
    Merge,
    Registry,
    Series,
    family,
)

METHOD_CLASSES = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
OTHER = "other"
# Index = status // 100; codes outside 100-599 (aiohttp lets 600-999 through) are "other".
STATUS_CLASSES = (OTHER, "1xx", "2xx", "3xx", "4xx", "5xx", OTHER, OTHER, OTHER, OTHER)


def _by_dependency(statuses: Callable[[], Iterable[DependencyStatus]],
                   value: Callable[[DependencyStatus], float]
                   ) -> Callable[[], Iterator[tuple[Sequence[str], float]]]:
    """A gauge's series, one per dependency, read from the statuses when a snapshot is
    taken: a dependency added or removed by a reload appears or disappears with it."""
    return lambda: (((s.dep.name,), value(s)) for s in statuses())


class _Forwarded:
    """`gateproxy_forwarded_requests`: a table of ints by method class, indexed by
    status // 100, every series there from the start."""

    name = "gateproxy_forwarded_requests"
    help = ("HTTP requests forwarded upstream, by method and by the class of the status "
            "sent back (WebSocket sessions: gateproxy_websockets_open)")
    labels: Sequence[str] = ("method", "status_class")
    merge: Merge = SUM

    def __init__(self) -> None:
        self.created = time.time()
        self.table = {m: [0] * len(STATUS_CLASSES) for m in (*METHOD_CLASSES, OTHER)}

    def snapshot(self) -> Family:
        series: list[Series] = []
        for method, counts in self.table.items():
            by_class: dict[str, int] = {}
            for status_class, count in zip(STATUS_CLASSES, counts, strict=True):
                by_class[status_class] = by_class.get(status_class, 0) + count
            series += [((method, status_class), count, self.created)
                       for status_class, count in by_class.items()]
        return family(self, COUNTER, series)


class _Retries:
    """`gateproxy_upstream_retries`: read from the upstream's reconnector
    (gateproxy/upstream/reconnect.py), which counts in plain ints, as requests do."""

    name = "gateproxy_upstream_retries"
    help = ("Requests that met the platform-server down (upstream.retry_connect_ms), by "
            "how their wait ended")
    labels: Sequence[str] = ("outcome",)
    merge: Merge = SUM

    def __init__(self, counts: Mapping[str, int]) -> None:
        self._counts = counts
        self.created = time.time()

    def snapshot(self) -> Family:
        return family(self, COUNTER, [((outcome,), count, self.created)
                                      for outcome, count in self._counts.items()])


class Metrics:
    def __init__(self, statuses: Callable[[], Iterable[DependencyStatus]],
                 open_websockets: Callable[[], int], upstream_up: Callable[[], bool],
                 upstream_retries: Mapping[str, int], ready: Callable[[], bool]) -> None:
        """`upstream_up`, `upstream_retries`: the upstream's state and its requests' waits
        by outcome; `ready`: whether `ready` answers 200."""
        registry = self.registry = Registry()
        registry.add(Gauge("gateproxy_dependency_up",
                           "1 while the dependency is up, 0 while down or unknown",
                           ["dependency"], _by_dependency(statuses, lambda s: float(s.is_up)),
                           merge=SUPERVISOR))
        registry.add(Gauge(
            "gateproxy_dependency_info", "Always 1: how each dependency is probed, and where",
            ["dependency", "probe", "endpoint"],
            lambda: (((s.dep.name, s.dep.probe, s.base_url), 1.0) for s in statuses()),
            merge=SUPERVISOR))
        registry.add(Gauge("gateproxy_dependency_maintenance",
                           "1 while the dependency is in maintenance (by hand)",
                           ["dependency"],
                           _by_dependency(statuses, lambda s: float(s.maintenance is not None)),
                           merge=SUPERVISOR))
        # Held in the workers: their sum is the pod's.
        registry.add(Gauge("gateproxy_held_requests",
                           "Gated requests waiting for the dependency (hold_ms)",
                           ["dependency"], _by_dependency(statuses, lambda s: float(s.held))))
        # The lowest over the workers: one that finds the platform-server down is enough,
        # since a worker that had no request meanwhile has not tried it.
        registry.add(Gauge(
            "gateproxy_upstream_up",
            "1 while the platform-server accepts connections (as this process's last "
            "connection found it; with workers, as every one of them found it), 0 while "
            "it refuses them", [], lambda: [((), float(upstream_up()))], merge=LOWEST))
        registry.add(_Retries(upstream_retries))
        registry.add(Gauge("gateproxy_ready", "1 while ready answers 200, else 0", [],
                           lambda: [((), float(ready()))], merge=SUPERVISOR))
        self._probes = registry.add(Counter(
            "gateproxy_probes", "Readiness probes by result and errorCode",
            ["dependency", "result", "error_code"], merge=SUPERVISOR))
        self._probe_seconds = registry.add(Histogram(
            "gateproxy_probe_duration_seconds", "Duration of readiness probes",
            ["dependency"], merge=SUPERVISOR))
        self._gated = registry.add(Counter("gateproxy_gated_requests",
                                           "Requests answered 503 by the gate",
                                           ["dependency", "route"]))
        forwarded = registry.add(_Forwarded())
        self._forwarded = forwarded.table
        self._forwarded_other = forwarded.table[OTHER]
        # The time from sending a request upstream to its response's headers; the fast
        # path calls this bound method itself, one call per request.
        self.observe_upstream = registry.add(Histogram(
            "gateproxy_upstream_latency_seconds",
            "Time from sending a request upstream to receiving its response headers"
        )).child().observe
        # By (dependency, route): the dependency's minute buckets' add.
        self._gated_recent: dict[tuple[str, str], Callable[[], None]] = {}
        # By dependency name, kept across reloads: its gated requests of the last hour.
        self.gated_recent: dict[str, MinuteBuckets] = {}
        self.forwarded_recent = MinuteBuckets()
        self._forwarded_recent_add = self.forwarded_recent.add
        registry.add(Gauge("gateproxy_websockets_open", "WebSocket sessions being relayed",
                           [], lambda: [((), float(open_websockets()))]))
        reloads = registry.add(Counter("gateproxy_config_reloads",
                                       "Configuration reloads by result", ["result"],
                                       merge=SUPERVISOR))
        self._reload_applied = reloads.child("applied")
        self._reload_rejected = reloads.child("rejected")
        self._holds = registry.add(Counter(
            "gateproxy_hold_outcomes", "Held requests (hold_ms) by how their wait ended",
            ["dependency", "outcome"]))
        self._admin_denied = registry.add(Counter(
            "gateproxy_admin_denied",
            "Attempts to change state on the admin port that were refused, by error code "
            "(forbidden: not on the loopback and no admin_token set; unauthorized: no "
            "valid token)", ["code"], merge=SUPERVISOR))

    def observe_probe(self, status: DependencyStatus, result: ProbeResult) -> None:
        """The monitor's `on_result` hook."""
        name = status.dep.name
        if result.error is None:
            self._probes.inc(name, "success", "")
        else:
            self._probes.inc(name, "failure", result.error.code)
        self._probe_seconds.child(name).observe(result.duration_ms / 1000)

    def count_gated(self, dependency: str, prefix: str) -> None:
        key = (dependency, prefix)
        count = self._gated.series.get(key)
        if count is None:
            count = self._gated.child(dependency, prefix)
            recent = self.gated_recent.setdefault(dependency, MinuteBuckets())
            self._gated_recent[key] = recent.add
        count[0] += 1
        self._gated_recent[key]()

    def count_reload(self, applied: bool) -> None:
        (self._reload_applied if applied else self._reload_rejected)[0] += 1

    def count_admin_denied(self, code: str) -> None:
        self._admin_denied.inc(code)

    def count_hold(self, dependency: str, outcome: str) -> None:
        self._holds.inc(dependency, outcome)

    def count_forwarded(self, method: str, status: int) -> None:
        self._forwarded.get(method, self._forwarded_other)[status // 100] += 1
        self._forwarded_recent_add()

    def snapshot(self) -> list[Family]:
        """Every family's numbers now, in the order /metrics lists them."""
        return self.registry.snapshot()

    def recent(self) -> dict[str, Any]:
        """The status page's counts for the last 5 and 60 minutes: forwarded requests,
        and gated ones by dependency."""
        return {"forwarded": self.forwarded_recent.as_dict(),
                "gated": {name: buckets.as_dict()
                          for name, buckets in self.gated_recent.items()}}
