"""Several workers' counts as one (gateproxy/workers/aggregate.py), as pure functions.

Each process's numbers are snapshots of gateproxy/views/counts.py's counters, gauges and
histograms, sent through orjson as a worker sends them; the merged families are written
by gateproxy/views/exposition.py and read back with prometheus_client's own parser.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateproxy.views.counts import LOWEST, SUPERVISOR, Counter, Family, Gauge, Histogram, Registry
from gateproxy.views.exposition import render
from gateproxy.workers.aggregate import merge, sum_recent
from tests.support.metric_samples import Samples, parse, value

BOUNDS = (0.01, 0.1, 1.0)


class Process:
    """One process's metrics, in a registry of its own (as each worker has)."""

    def __init__(self, websockets: float = 0, up: float = 0, *, new: bool = False,
                 upstream_up: float = 1) -> None:
        self.registry = Registry()
        self.up = self.registry.add(Gauge("gateproxy_dependency_up", "Dependency up",
                                          ["dependency"], lambda: [(("docker-runner",), up)],
                                          merge=SUPERVISOR))
        self.probes = self.registry.add(Counter("gateproxy_probes", "Readiness probes",
                                                ["result"], merge=SUPERVISOR))
        self.forwarded = self.registry.add(Counter("gateproxy_forwarded_requests",
                                                   "Forwarded requests",
                                                   ["method", "status_class"]))
        self.latency = self.registry.add(Histogram("gateproxy_upstream_latency_seconds",
                                                   "Time to headers", bounds=BOUNDS))
        self.registry.add(Gauge("gateproxy_websockets_open", "WebSocket sessions", [],
                                lambda: [((), websockets)]))
        self.registry.add(Gauge("gateproxy_upstream_up", "Upstream up", [],
                                lambda: [((), upstream_up)], merge=LOWEST))
        if new:  # a metric only a newer worker has: it flows through as any other
            self.retries = self.registry.add(Counter(
                "gateproxy_upstream_retries", "Upstream connect retries", ["outcome"]))

    def snapshot(self) -> list[Family]:
        """As the supervisor receives it: through orjson."""
        snapshot: list[Family] = orjson.loads(orjson.dumps(self.registry.snapshot()))
        return snapshot


def merged(supervisor: Process, *workers: Process) -> Samples:
    return parse(text(supervisor, *workers))


def text(supervisor: Process, *workers: Process) -> str:
    return render(merge(supervisor.snapshot(), [w.snapshot() for w in workers])).decode()


def test_counters_add_up_series_by_series() -> None:
    one, two = Process(), Process()
    for _ in range(3):
        one.forwarded.inc("GET", "2xx")
    one.forwarded.inc("POST", "5xx")
    for _ in range(4):
        two.forwarded.inc("GET", "2xx")
    for _ in range(2):
        two.forwarded.inc("GET", "4xx")
    samples = merged(Process(), one, two)
    total = "gateproxy_forwarded_requests_total"
    assert value(samples, total, method="GET", status_class="2xx") == 7
    assert value(samples, total, method="POST", status_class="5xx") == 1, "one worker's only"
    assert value(samples, total, method="GET", status_class="4xx") == 2
    assert "# TYPE gateproxy_forwarded_requests_total counter" in text(Process(), one, two)


def test_gauges_of_the_workers_add_up() -> None:
    """Open WebSockets (and held requests) are each worker's own: the sum is the pod's."""
    samples = merged(Process(), Process(websockets=2), Process(websockets=5), Process())
    assert value(samples, "gateproxy_websockets_open") == 7
    assert "# TYPE gateproxy_websockets_open gauge" in text(Process(), Process())


def test_the_upstream_is_up_only_while_every_worker_finds_it_up() -> None:
    """A worker that had no request while the upstream was down has not tried it: one
    that found it down is enough, whatever the supervisor's own value says."""
    assert value(merged(Process(), Process(), Process()), "gateproxy_upstream_up") == 1
    assert value(merged(Process(upstream_up=1), Process(), Process(upstream_up=0)),
                 "gateproxy_upstream_up") == 0


def test_histograms_add_up_bucket_by_bucket() -> None:
    one, two = Process(), Process()
    for seconds in (0.005, 0.05, 0.5):
        one.latency.child().observe(seconds)
    for seconds in (0.005, 2.0):
        two.latency.child().observe(seconds)
    samples = merged(Process(), one, two)
    name = "gateproxy_upstream_latency_seconds"
    buckets = {le: value(samples, f"{name}_bucket", le=le)
               for le in ("0.01", "0.1", "1.0", "+Inf")}
    assert buckets == {"0.01": 2, "0.1": 3, "1.0": 4, "+Inf": 5}, "cumulative, still"
    assert value(samples, f"{name}_count") == 5
    assert value(samples, f"{name}_sum") == pytest.approx(0.005 + 0.05 + 0.5 + 0.005 + 2.0)
    assert f"# TYPE {name} histogram" in text(Process(), one, two)


def test_the_earliest_created_timestamp_is_kept() -> None:
    one, two = Process(), Process()
    one.forwarded.child("GET", "2xx")[1] = 2000.0
    two.forwarded.child("GET", "2xx")[1] = 1000.0
    one.forwarded.inc("GET", "2xx")
    two.forwarded.inc("GET", "2xx")
    samples = merged(Process(), one, two)
    assert value(samples, "gateproxy_forwarded_requests_created", method="GET",
                 status_class="2xx") == 1000.0
    assert value(samples, "gateproxy_forwarded_requests_total", method="GET",
                 status_class="2xx") == 2


def test_the_supervisors_families_come_from_the_supervisor_alone() -> None:
    supervisor, one, two = Process(up=1), Process(), Process(up=0)
    for _ in range(9):
        supervisor.probes.inc("success")
    one.probes.inc("success")  # a worker does not probe; if it did, not counted
    samples = merged(supervisor, one, two)
    assert value(samples, "gateproxy_probes_total", result="success") == 9
    assert value(samples, "gateproxy_dependency_up", dependency="docker-runner") == 1


def test_the_supervisors_request_counts_are_not_added() -> None:
    """The supervisor serves no proxied requests: only the workers' counts are the pod's."""
    supervisor, one = Process(websockets=4), Process()
    for _ in range(50):
        supervisor.forwarded.inc("GET", "2xx")
    one.forwarded.inc("GET", "2xx")
    samples = merged(supervisor, one)
    assert value(samples, "gateproxy_forwarded_requests_total", method="GET",
                 status_class="2xx") == 1
    assert value(samples, "gateproxy_websockets_open") == 0


def test_a_family_the_supervisor_does_not_know_is_summed_too() -> None:
    one, two = Process(new=True), Process(new=True)
    one.retries.inc("connected")
    two.retries.inc("connected")
    two.retries.inc("gave_up")
    samples = merged(Process(), one, two)
    assert value(samples, "gateproxy_upstream_retries_total", outcome="connected") == 2
    assert value(samples, "gateproxy_upstream_retries_total", outcome="gave_up") == 1


def test_no_workers_leave_the_supervisors_series_only() -> None:
    supervisor = Process()
    supervisor.probes.inc("failure")
    supervisor.forwarded.inc("GET", "2xx")
    samples = merged(supervisor)
    assert value(samples, "gateproxy_probes_total", result="failure") == 1
    assert not [name for name, _ in samples if name.startswith("gateproxy_forwarded")]


def test_the_merged_text_has_help_type_and_the_supervisors_process() -> None:
    one = Process()
    one.forwarded.inc("GET", "2xx")
    got = text(Process(), one)
    assert "# HELP gateproxy_forwarded_requests_total Forwarded requests" in got
    assert "# TYPE gateproxy_forwarded_requests_total counter" in got
    assert value(parse(got), "process_resident_memory_bytes") > 0


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
