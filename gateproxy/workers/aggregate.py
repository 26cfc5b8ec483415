"""One view of several worker processes' counts (`workers: N`). Pure.

Each worker serves requests and counts them; only the supervisor probes. The supervisor's
metrics and status page therefore add up what the workers report (request counters,
histograms, open WebSockets, held requests) and take the rest from the supervisor itself
(dependency state, probes, reloads, the process). prometheus-client's parser reads the
workers' expositions; the merged families are written out by prometheus-client again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

# Families the supervisor knows best: it probes and reloads, and is the process to watch.
SUPERVISOR_FAMILIES: Final = frozenset({
    "gateproxy_dependency_up", "gateproxy_dependency_info", "gateproxy_dependency_maintenance",
    "gateproxy_probes", "gateproxy_probe_duration_seconds", "gateproxy_config_reloads",
    "gateproxy_ready",
})


def _supervisors(name: str) -> bool:
    return name in SUPERVISOR_FAMILIES or name.startswith("process_")


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_expositions(supervisor: str, workers: Iterable[str]) -> bytes:
    """The supervisor's families it knows best, and every other family summed over the
    workers (a `_created` timestamp: the earliest)."""
    merged: dict[str, Metric] = {}
    for family in text_string_to_metric_families(supervisor):
        if _supervisors(family.name):
            merged[family.name] = family
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in workers:
        for family in text_string_to_metric_families(text):
            if _supervisors(family.name):
                continue
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
            values = sums.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.name.endswith("_created"):
                    values[key] = min(values.get(key, sample.value), sample.value)
                else:
                    values[key] = values.get(key, 0.0) + sample.value
    for name, values in sums.items():
        family = merged[name]
        for (sample_name, labels), value in values.items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry()
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry)


def sum_recent(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The status page's recent counts (`Metrics.recent`, plus `held` and the upstream's
    row) of every worker, added up."""
    forwarded = {"last5m": 0, "last60m": 0}
    gated: dict[str, dict[str, int]] = {}
    held: dict[str, int] = {}
    upstream: list[Mapping[str, Any]] = []
    for report in reports:
        for window, count in report["forwarded"].items():
            forwarded[window] += count
        for name, counts in report["gated"].items():
            into = gated.setdefault(name, {"last5m": 0, "last60m": 0})
            for window, count in counts.items():
                into[window] += count
        for name, count in report["held"].items():
            held[name] = held.get(name, 0) + count
        upstream.append(report["upstream"])
    return {"forwarded": forwarded, "gated": gated, "held": held,
            "upstream": merge_upstream(upstream)}


def merge_upstream(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The platform-server's row of several workers (`UpstreamState.snapshot` and
    `waiting` each): down while any worker finds it down, since the latest change to
    that state, the latest error, the restarts the most watchful worker saw (each worker
    sees the same restarts), and every worker's waiting requests."""
    if not rows:
        return {"status": "up", "since": None, "lastError": None, "restartsLastHour": 0,
                "waiting": 0}
    status = "down" if any(r["status"] == "down" for r in rows) else "up"
    latest = max((r for r in rows if r["status"] == status), key=lambda r: r["since"])
    errors = [r for r in rows if r["lastError"] is not None]
    return {"status": status, "since": latest["since"],
            "lastError": max(errors, key=lambda r: r["since"])["lastError"] if errors else None,
            "restartsLastHour": max(r["restartsLastHour"] for r in rows),
            "waiting": sum(r["waiting"] for r in rows)}
