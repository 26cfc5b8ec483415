"""The Prometheus text exposition of metric snapshots (gateproxy/views/counts.py), written
by prometheus-client, with the process's own metrics first.

The families come out with the names, help, series order, values and `_created` samples
that prometheus-client's Counter, Gauge and Histogram would give for the same counts (a
test feeds both the same events). Only the process that answers a scrape loads this: a
worker of several sends its numbers, and its supervisor writes them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
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

from gateproxy.views.counts import COUNTER, GAUGE, Family

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# Whether prometheus-client adds `_created` samples (PROMETHEUS_DISABLE_CREATED_SERIES).
_CREATED = any(s.name.endswith("_created") for family in
               Counter("probe", "probe", registry=None).collect() for s in family.samples)


def _le(bounds: Sequence[float]) -> list[str]:
    """The `le` labels of these bounds and +Inf, spelled as Histogram spells them."""
    return [*(floatToGoString(b) for b in bounds), "+Inf"]  # type: ignore[no-untyped-call]


def _metric(family: Family) -> Metric:
    name, labels = family["name"], family["labels"]
    if family["type"] == COUNTER:
        counter = CounterMetricFamily(name, family["help"], labels=labels)
        for values, count, created in family["series"]:
            counter.add_metric(values, float(count), created if _CREATED else None)
        return counter
    if family["type"] == GAUGE:
        gauge = GaugeMetricFamily(name, family["help"], labels=labels)
        for values, value, _ in family["series"]:
            gauge.add_metric(values, float(value))
        return gauge
    histogram = HistogramMetricFamily(name, family["help"], labels=labels)
    le = _le(family["bounds"])
    for values, (counts, total), created in family["series"]:
        buckets = []
        acc = 0.0
        for bound, count in zip(le, counts, strict=True):
            acc += count
            buckets.append((bound, acc))
        histogram.add_metric(values, buckets, total)
        if _CREATED and created is not None:
            histogram.samples.append(
                Sample(name + "_created", dict(zip(labels, values, strict=True)), created))
    return histogram


class _Families(Collector):
    def __init__(self, families: Sequence[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return (_metric(family) for family in self._families)


def render(families: Sequence[Family]) -> bytes:
    """The exposition: this process's `process_*` metrics, then `families`."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(_Families(families))
    return generate_latest(registry)
