"""Several workers' counts as one (gateproxy/workers/aggregate.py), as pure functions.

The expositions are written by prometheus_client's own registries and the merged text is
read back with its parser (`text_string_to_metric_families`): gateproxy's metrics code
is not used on either side.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateproxy.workers.aggregate import SUPERVISOR_FAMILIES, merge_expositions, sum_recent
from tests.support.metric_samples import Samples, parse, value

BUCKETS = (0.01, 0.1, 1.0)


class Process:
    """One process's metrics, in a registry of its own (as each worker has)."""

    def __init__(self, created: float | None = None) -> None:
        self.registry = CollectorRegistry()
        self.forwarded = Counter("gateproxy_forwarded_requests", "Forwarded requests",
                                 ["method", "status_class"], registry=self.registry)
        self.websockets = Gauge("gateproxy_websockets_open", "WebSocket sessions",
                                registry=self.registry)
        self.latency = Histogram("gateproxy_upstream_latency_seconds", "Time to headers",
                                 buckets=BUCKETS, registry=self.registry)
        self.probes = Counter("gateproxy_probes", "Readiness probes", ["result"],
                              registry=self.registry)
        self.up = Gauge("gateproxy_dependency_up", "Dependency up", ["dependency"],
                        registry=self.registry)
        self.created = created

    def text(self) -> str:
        text = generate_latest(self.registry).decode()
        if self.created is None:
            return text
        # Each process's own start: every `_created` sample says when.
        return "\n".join(_with_created(line, self.created) for line in text.splitlines()) + "\n"


def _with_created(line: str, created: float) -> str:
    name = line.split("{", 1)[0].split(" ", 1)[0]
    if line.startswith("#") or not name.endswith("_created"):
        return line
    return f"{line.rsplit(' ', 1)[0]} {created}"


def merged(supervisor: Process, *workers: Process) -> Samples:
    text = merge_expositions(supervisor.text(), [w.text() for w in workers]).decode()
    return parse(text)


def families(supervisor: Process, *workers: Process) -> dict[str, str]:
    text = merge_expositions(supervisor.text(), [w.text() for w in workers]).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_counters_add_up_series_by_series() -> None:
    one, two = Process(), Process()
    one.forwarded.labels("GET", "2xx").inc(3)
    one.forwarded.labels("POST", "5xx").inc(1)
    two.forwarded.labels("GET", "2xx").inc(4)
    two.forwarded.labels("GET", "4xx").inc(2)
    samples = merged(Process(), one, two)
    total = "gateproxy_forwarded_requests_total"
    assert value(samples, total, method="GET", status_class="2xx") == 7
    assert value(samples, total, method="POST", status_class="5xx") == 1, "one worker's only"
    assert value(samples, total, method="GET", status_class="4xx") == 2
    assert families(Process(), one, two)["gateproxy_forwarded_requests"] == "counter"


def test_gauges_of_the_workers_add_up() -> None:
    """Open WebSockets (and held requests) are each worker's own: the sum is the pod's."""
    one, two, three = Process(), Process(), Process()
    one.websockets.set(2)
    two.websockets.set(5)
    samples = merged(Process(), one, two, three)
    assert value(samples, "gateproxy_websockets_open") == 7
    assert families(Process(), one, two, three)["gateproxy_websockets_open"] == "gauge"


def test_histograms_add_up_bucket_by_bucket() -> None:
    one, two = Process(), Process()
    for seconds in (0.005, 0.05, 0.5):
        one.latency.observe(seconds)
    for seconds in (0.005, 2.0):
        two.latency.observe(seconds)
    samples = merged(Process(), one, two)
    name = "gateproxy_upstream_latency_seconds"
    buckets = {le: value(samples, f"{name}_bucket", le=le)
               for le in ("0.01", "0.1", "1.0", "+Inf")}
    assert buckets == {"0.01": 2, "0.1": 3, "1.0": 4, "+Inf": 5}, "cumulative, still"
    assert value(samples, f"{name}_count") == 5
    assert value(samples, f"{name}_sum") == pytest.approx(0.005 + 0.05 + 0.5 + 0.005 + 2.0)
    assert families(Process(), one, two)[name] == "histogram"


def test_the_earliest_created_timestamp_is_kept() -> None:
    one, two = Process(created=2000.0), Process(created=1000.0)
    one.forwarded.labels("GET", "2xx").inc()
    two.forwarded.labels("GET", "2xx").inc()
    samples = merged(Process(), one, two)
    assert value(samples, "gateproxy_forwarded_requests_created", method="GET",
                 status_class="2xx") == 1000.0
    assert value(samples, "gateproxy_forwarded_requests_total", method="GET",
                 status_class="2xx") == 2


def test_the_supervisors_families_come_from_the_supervisor_alone() -> None:
    supervisor, one, two = Process(), Process(), Process()
    supervisor.probes.labels("success").inc(9)
    supervisor.up.labels("docker-runner").set(1)
    one.probes.labels("success").inc(100)  # a worker does not probe; if it did, not counted
    two.up.labels("docker-runner").set(0)
    samples = merged(supervisor, one, two)
    assert value(samples, "gateproxy_probes_total", result="success") == 9
    assert value(samples, "gateproxy_dependency_up", dependency="docker-runner") == 1
    assert {"gateproxy_probes", "gateproxy_dependency_up"} <= SUPERVISOR_FAMILIES


def test_process_families_are_the_supervisors() -> None:
    head = "# HELP process_open_fds fds\n# TYPE process_open_fds gauge\n"
    supervisor, worker = head + "process_open_fds 7.0\n", head + "process_open_fds 50.0\n"
    samples = parse(merge_expositions(supervisor, [worker, worker]).decode())
    assert value(samples, "process_open_fds") == 7


def test_the_supervisors_request_counts_are_not_added() -> None:
    """The supervisor serves no proxied requests: only the workers' counts are the pod's."""
    supervisor, one = Process(), Process()
    supervisor.forwarded.labels("GET", "2xx").inc(50)
    one.forwarded.labels("GET", "2xx").inc(1)
    samples = merged(supervisor, one)
    assert value(samples, "gateproxy_forwarded_requests_total", method="GET",
                 status_class="2xx") == 1


def test_no_workers_leave_the_supervisors_families_only() -> None:
    supervisor = Process()
    supervisor.probes.labels("failure").inc(2)
    found = families(supervisor)
    assert "gateproxy_probes" in found and "gateproxy_forwarded_requests" not in found


def test_the_merged_text_reads_back_with_help_and_type() -> None:
    one = Process()
    one.forwarded.labels("GET", "2xx").inc()
    text = merge_expositions(Process().text(), [one.text()]).decode()
    assert "# HELP gateproxy_forwarded_requests_total Forwarded requests" in text
    assert "# TYPE gateproxy_forwarded_requests_total counter" in text
    assert "# TYPE gateproxy_upstream_latency_seconds histogram" in text


# --- the status page's recent counts ------------------------------------------------------

UP = {"status": "up", "since": 100.0, "lastError": None, "restartsLastHour": 0, "waiting": 0}


def report(forwarded: tuple[int, int], gated: dict[str, tuple[int, int]],
           held: dict[str, int], upstream: dict[str, Any] = UP) -> dict[str, Any]:
    return {"forwarded": {"last5m": forwarded[0], "last60m": forwarded[1]},
            "gated": {name: {"last5m": a, "last60m": b} for name, (a, b) in gated.items()},
            "held": held, "upstream": upstream}


def test_recent_counts_add_up_per_window_and_dependency() -> None:
    got = sum_recent([
        report((3, 30), {"docker-runner": (1, 10)}, {"docker-runner": 2}),
        report((4, 40), {"docker-runner": (2, 20), "other": (0, 5)}, {"other": 1}),
    ])
    assert got == {"forwarded": {"last5m": 7, "last60m": 70},
                   "gated": {"docker-runner": {"last5m": 3, "last60m": 30},
                             "other": {"last5m": 0, "last60m": 5}},
                   "held": {"docker-runner": 2, "other": 1}, "upstream": UP}


def test_no_reports_are_zero_counts() -> None:
    assert sum_recent([]) == {"forwarded": {"last5m": 0, "last60m": 0}, "gated": {},
                              "held": {}, "upstream": {**UP, "since": None}}


def test_the_upstream_is_down_while_one_worker_finds_it_down_and_waiting_adds_up() -> None:
    refused = {"code": "connection_refused", "message": "refused"}
    older = {"code": "connection_reset", "message": "reset"}
    rows = [{"status": "up", "since": 50.0, "lastError": older, "restartsLastHour": 1,
             "waiting": 0},
            {"status": "down", "since": 120.0, "lastError": refused, "restartsLastHour": 2,
             "waiting": 7},
            {"status": "down", "since": 110.0, "lastError": refused, "restartsLastHour": 2,
             "waiting": 3}]
    got = sum_recent([report((0, 0), {}, {}, row) for row in rows])["upstream"]
    # The same restart is seen by every worker: the most any one saw, not the sum.
    assert got == {"status": "down", "since": 120.0, "lastError": refused,
                   "restartsLastHour": 2, "waiting": 10}
    rows = [{**row, "status": "up"} for row in rows]
    got = sum_recent([report((0, 0), {}, {}, row) for row in rows])["upstream"]
    assert got["status"] == "up" and got["since"] == 120.0
