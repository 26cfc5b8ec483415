"""Prometheus metrics of one Gateway, on a registry of its own.

A registry per Gateway (not prometheus-client's global one) lets several gateways live in
one process, as they do in the tests. The per-request metrics (gated and forwarded
requests, upstream latency) are plain ints in small tables, so a request pays an index
and an add, never a lock, a label lookup or string formatting; `_RequestCounts` turns them
into the samples prometheus-client's Counter and Histogram would give, at scrape time.
Gated and forwarded requests also go into per-minute buckets for the status page (its
counts for the last 5 and 60 minutes): one more add, as cheap.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDict
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from gateproxy.core.dependency import DependencyStatus
from gateproxy.core.history import MinuteBuckets
from gateproxy.monitor.probe import ProbeResult
from gateproxy.upstream.interface import UpstreamClient, UpstreamResponse

CONTENT_TYPE = CONTENT_TYPE_LATEST
METHOD_CLASSES = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
OTHER = "other"
# Index = status // 100; codes outside 100-599 (aiohttp lets 600-999 through) are "other".
STATUS_CLASSES = (OTHER, "1xx", "2xx", "3xx", "4xx", "5xx", OTHER, OTHER, OTHER, OTHER)
# Whether prometheus-client adds `_created` samples (PROMETHEUS_DISABLE_CREATED_SERIES).
_CREATED = any(s.name.endswith("_created") for family in
               Counter("probe", "probe", registry=None).collect() for s in family.samples)


class _DependencyUp(Collector):
    """`gateproxy_dependency_up`, `gateproxy_dependency_info` (how it is probed, and
    where), its maintenance and its held requests, read from the statuses at scrape time,
    so that a dependency added or removed by a reload appears or disappears with it."""

    def __init__(self, statuses: Callable[[], Iterable[DependencyStatus]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("gateproxy_dependency_up",
                               "1 while the dependency is up, 0 while down or unknown",
                               labels=["dependency"])
        info = GaugeMetricFamily("gateproxy_dependency_info",
                                 "Always 1: how each dependency is probed, and where",
                                 labels=["dependency", "probe", "endpoint"])
        maintenance = GaugeMetricFamily("gateproxy_dependency_maintenance",
                                        "1 while the dependency is in maintenance (by hand)",
                                        labels=["dependency"])
        held = GaugeMetricFamily("gateproxy_held_requests",
                                 "Gated requests waiting for the dependency (hold_ms)",
                                 labels=["dependency"])
        for status in self._statuses():
            up.add_metric([status.dep.name], 1.0 if status.is_up else 0.0)
            info.add_metric([status.dep.name, status.dep.probe, status.base_url], 1.0)
            maintenance.add_metric([status.dep.name], float(status.maintenance is not None))
            held.add_metric([status.dep.name], float(status.held))
        yield from (up, info, maintenance, held)


class _Upstream(Collector):
    """`gateproxy_upstream_up` and `gateproxy_upstream_retries`, read at scrape time from
    the upstream's reconnector (gateproxy/upstream/reconnect.py), which counts in plain
    ints, as requests do."""

    def __init__(self, up: Callable[[], bool], retries: Mapping[str, int]) -> None:
        self._up = up
        self._retries = retries
        self.created = time.time()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "gateproxy_upstream_up",
            "1 while the platform-server accepts connections (as this process's last "
            "connection found it), 0 while it refuses them")
        up.add_metric([], float(self._up()))
        retries = CounterMetricFamily(
            "gateproxy_upstream_retries",
            "Requests that met the platform-server down (upstream.retry_connect_ms), by "
            "how their wait ended", labels=["outcome"])
        for outcome, count in self._retries.items():
            retries.add_metric([outcome], float(count), self.created if _CREATED else None)
        yield from (up, retries)


class _RequestCounts(Collector):
    """`gateproxy_gated_requests`, `gateproxy_forwarded_requests` and
    `gateproxy_upstream_latency_seconds`: counted in plain ints on the event loop, and
    exported with the names, labels, series order and values prometheus-client's
    Counter and Histogram give (a test compares the two)."""

    BOUNDS = Histogram.DEFAULT_BUCKETS
    # The `le` labels, spelled as Histogram spells them.
    LE = tuple(floatToGoString(b) for b in BOUNDS)  # type: ignore[no-untyped-call]

    def __init__(self) -> None:
        self.created = time.time()
        # By (dependency, route), in the order first seen: [count, when first seen].
        self.gated: dict[tuple[str, str], list[float]] = {}
        # By method class: counts indexed by status // 100 (STATUS_CLASSES).
        self.forwarded = {m: [0] * len(STATUS_CLASSES) for m in (*METHOD_CLASSES, OTHER)}
        # Observations per bucket (not cumulative: the bucket an observation falls in).
        self.latency = [0] * len(self.BOUNDS)
        self.latency_sum = 0.0

    def collect(self) -> Iterator[Metric]:
        gated = CounterMetricFamily("gateproxy_gated_requests",
                                    "Requests answered 503 by the gate",
                                    labels=["dependency", "route"])
        for (dependency, route), (count, created) in self.gated.items():
            gated.add_metric([dependency, route], float(count), created if _CREATED else None)
        yield gated
        forwarded = CounterMetricFamily(
            "gateproxy_forwarded_requests",
            "HTTP requests forwarded upstream, by method and by the class of the status "
            "sent back (WebSocket sessions: gateproxy_websockets_open)",
            labels=["method", "status_class"])
        for method, counts in self.forwarded.items():
            by_class: dict[str, float] = {}
            for status_class, count in zip(STATUS_CLASSES, counts, strict=True):
                by_class[status_class] = by_class.get(status_class, 0.0) + count
            for status_class, count in by_class.items():
                forwarded.add_metric([method, status_class], count,
                                     self.created if _CREATED else None)
        yield forwarded
        name = "gateproxy_upstream_latency_seconds"
        latency = HistogramMetricFamily(
            name, "Time from sending a request upstream to receiving its response headers")
        buckets = []
        acc = 0.0
        for le, count in zip(self.LE, self.latency, strict=True):
            acc += count
            buckets.append((le, acc))
        latency.add_metric([], buckets, self.latency_sum)
        if _CREATED:
            latency.samples.append(Sample(name + "_created", {}, self.created))
        yield latency


class Metrics:
    def __init__(self, statuses: Callable[[], Iterable[DependencyStatus]],
                 open_websockets: Callable[[], int], upstream_up: Callable[[], bool],
                 upstream_retries: Mapping[str, int], ready: Callable[[], bool]) -> None:
        """`upstream_up`, `upstream_retries`: the upstream's state and its requests' waits
        by outcome; `ready`: whether `ready` answers 200."""
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)
        registry.register(_DependencyUp(statuses))
        registry.register(_Upstream(upstream_up, upstream_retries))
        Gauge("gateproxy_ready", "1 while ready answers 200, else 0",
              registry=registry).set_function(lambda: float(ready()))
        self._probes = Counter(
            "gateproxy_probes", "Readiness probes by result and errorCode",
            ["dependency", "result", "error_code"], registry=registry)
        self._probe_seconds = Histogram(
            "gateproxy_probe_duration_seconds", "Duration of readiness probes",
            ["dependency"], registry=registry)
        counts = self._counts = _RequestCounts()
        registry.register(counts)
        self._gated = counts.gated
        # By (dependency, route): its count, and the dependency's minute buckets.
        self._gated_recent: dict[tuple[str, str], Callable[[], None]] = {}
        # By dependency name, kept across reloads: its gated requests of the last hour.
        self.gated_recent: dict[str, MinuteBuckets] = {}
        self.forwarded_recent = MinuteBuckets()
        self._forwarded_recent_add = self.forwarded_recent.add
        self._forwarded = counts.forwarded
        self._forwarded_other = counts.forwarded[OTHER]
        Gauge("gateproxy_websockets_open", "WebSocket sessions being relayed",
              registry=registry).set_function(open_websockets)
        reloads = Counter(
            "gateproxy_config_reloads", "Configuration reloads by result",
            ["result"], registry=registry)
        self._holds = Counter(
            "gateproxy_hold_outcomes", "Held requests (hold_ms) by how their wait ended",
            ["dependency", "outcome"], registry=registry)
        self.reload_applied = reloads.labels("applied")
        self.reload_rejected = reloads.labels("rejected")
        self._admin_denied = Counter(
            "gateproxy_admin_denied",
            "Attempts to change state on the admin port that were refused, by error code "
            "(forbidden: not on the loopback and no admin_token set; unauthorized: no "
            "valid token)", ["code"], registry=registry)

    def observe_probe(self, status: DependencyStatus, result: ProbeResult) -> None:
        """The monitor's `on_result` hook."""
        name = status.dep.name
        if result.error is None:
            self._probes.labels(name, "success", "").inc()
        else:
            self._probes.labels(name, "failure", result.error.code).inc()
        self._probe_seconds.labels(name).observe(result.duration_ms / 1000)

    def count_gated(self, dependency: str, prefix: str) -> None:
        key = (dependency, prefix)
        count = self._gated.get(key)
        if count is None:
            count = self._gated[key] = [0, time.time()]
            recent = self.gated_recent.setdefault(dependency, MinuteBuckets())
            self._gated_recent[key] = recent.add
        count[0] += 1
        self._gated_recent[key]()

    def count_admin_denied(self, code: str) -> None:
        self._admin_denied.labels(code).inc()

    def count_hold(self, dependency: str, outcome: str) -> None:
        self._holds.labels(dependency, outcome).inc()

    def count_forwarded(self, method: str, status: int) -> None:
        self._forwarded.get(method, self._forwarded_other)[status // 100] += 1
        self._forwarded_recent_add()

    def observe_upstream(self, seconds: float) -> None:
        """The time from sending a request upstream to its response's headers."""
        counts = self._counts
        counts.latency_sum += seconds
        # The first bucket whose bound is at least `seconds`, as Histogram.observe picks.
        counts.latency[bisect_left(counts.BOUNDS, seconds)] += 1

    def timed(self, client: UpstreamClient) -> UpstreamClient:
        """`client`, with the time to each response's headers observed."""
        return _TimedUpstream(client, self.observe_upstream)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def recent(self) -> dict[str, Any]:
        """The status page's counts for the last 5 and 60 minutes: forwarded requests,
        and gated ones by dependency."""
        return {"forwarded": self.forwarded_recent.as_dict(),
                "gated": {name: buckets.as_dict()
                          for name, buckets in self.gated_recent.items()}}


class _TimedUpstream:
    __slots__ = ("_client", "_observe")

    def __init__(self, client: UpstreamClient, observe: Callable[[float], None]) -> None:
        self._client = client
        self._observe = observe

    async def send(self, method: str, target: str, headers: CIMultiDict[str],
                   body: aiohttp.StreamReader | None) -> UpstreamResponse:
        started = time.perf_counter()
        response = await self._client.send(method, target, headers, body)
        # Only answers count: a refused connection is not a fast upstream.
        self._observe(time.perf_counter() - started)
        return response

    async def close(self) -> None:
        await self._client.close()
