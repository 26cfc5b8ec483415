"""Prometheus text read back as samples, with prometheus_client's own parser (never
gateproxy's code), and looked up by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateproxy.views.exposition import render
from gateproxy.views.metrics import Metrics

# (sample name, its labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def exposition(metrics: Metrics) -> str:
    """What /metrics would write for `metrics` alone."""
    return render(metrics.snapshot()).decode()


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 when there is none)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` that has these labels (and any others)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)
