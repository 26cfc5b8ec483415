"""Prometheus metrics after known traffic, through a real Gateway between stand-ins."""

from __future__ import annotations

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateproxy.core.dependency import DependencyStatus
from gateproxy.demo.standins import StandIn, docker_runner, platform_server
from gateproxy.monitor.probe import ProbeResult
from gateproxy.serve.gateway import Gateway
from gateproxy.upstream.reconnect import Reconnector
from gateproxy.views.exposition import CONTENT_TYPE
from gateproxy.views.metrics import METHOD_CLASSES, OTHER, STATUS_CLASSES, Metrics
from tests.support.dependency_states import REFUSED, dep
from tests.support.gateways import MakeGateway, env_for, url
from tests.support.metric_samples import Samples, exposition, parse, total, value
from tests.support.standins import StartStandIn
from tests.support.waiting import wait_for


async def scrape(http: aiohttp.ClientSession, gateway: Gateway) -> Samples:
    async with http.get(url(gateway, "/_gateproxy/metrics")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE
        return parse(await resp.text())


async def test_metrics_after_known_traffic(
        start_standin: StartStandIn, make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    upstream = await start_standin(platform_server())
    runner = await start_standin(docker_runner())
    await runner.stop()  # down first, on a port that will come back
    gateway = await make_gateway(env_for(upstream, runner.url))
    status = gateway.node.guards[0].status
    await wait_for(lambda: status.total_failures >= 2)

    for _ in range(3):
        async with http.get(url(gateway, "/api/containers/abc/events")) as resp:
            assert resp.status == 503
    async with http.delete(url(gateway, "/api/containers/abc")) as resp:
        assert resp.status == 503
    samples = await scrape(http, gateway)
    assert value(samples, "gateproxy_dependency_up", dependency="docker-runner") == 0
    assert value(samples, "gateproxy_gated_requests_total", dependency="docker-runner",
                 route="/api/containers") == 4
    assert total(samples, "gateproxy_forwarded_requests_total") == 0
    assert value(samples, "gateproxy_upstream_latency_seconds_count") == 0

    await runner.start()
    await wait_for(lambda: status.is_up)
    for _ in range(2):
        async with http.get(url(gateway, "/api/threads")) as resp:
            assert resp.status == 200
    async with http.get(url(gateway, "/no/such/route")) as resp:
        assert resp.status == 404
    async with http.post(url(gateway, "/api/containers/w1/terminal/sessions")) as resp:
        assert resp.status == 201
    async with http.delete(url(gateway, "/api/containers/abc")) as resp:
        assert resp.status == 204
    async with http.request("PROPFIND", url(gateway, "/api/threads")) as resp:
        assert resp.status == 405
    async with http.get(url(gateway, "/health")) as resp:
        assert resp.status == 200  # answered by gateproxy: not a forwarded request

    samples = await scrape(http, gateway)
    forwarded = "gateproxy_forwarded_requests_total"
    assert value(samples, forwarded, method="GET", status_class="2xx") == 2
    assert value(samples, forwarded, method="GET", status_class="4xx") == 1
    assert value(samples, forwarded, method="POST", status_class="2xx") == 1
    assert value(samples, forwarded, method="DELETE", status_class="2xx") == 1
    assert value(samples, forwarded, method="other", status_class="4xx") == 1
    assert total(samples, forwarded) == 6
    assert value(samples, "gateproxy_upstream_latency_seconds_count") == 6
    assert value(samples, "gateproxy_upstream_latency_seconds_bucket", le="+Inf") == 6
    assert 0 < value(samples, "gateproxy_upstream_latency_seconds_sum") < 6
    assert value(samples, "gateproxy_dependency_up", dependency="docker-runner") == 1
    assert value(samples, "gateproxy_gated_requests_total", dependency="docker-runner",
                 route="/api/containers") == 4, "nothing gated while up"
    assert value(samples, "gateproxy_websockets_open") == 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_cpu_seconds_total") > 0

    # The probe series agree with the status, read together without yielding to the loop.
    samples = parse(exposition(gateway.node.metrics))
    probes = "gateproxy_probes_total"
    assert value(samples, probes, dependency="docker-runner", result="failure",
                 error_code="connection_refused") == status.total_failures
    assert value(samples, probes, dependency="docker-runner", result="success",
                 error_code="") == status.total_checks - status.total_failures
    assert value(samples, "gateproxy_probe_duration_seconds_count",
                 dependency="docker-runner") == status.total_checks


async def test_two_gateways_in_one_process_count_separately(
        start_standin: StartStandIn, runner: StandIn, make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    upstream = await start_standin(platform_server())
    first = await make_gateway(env_for(upstream, runner.url))
    second = await make_gateway(env_for(upstream, runner.url))
    for _ in range(3):
        async with http.get(url(first, "/api/threads")) as resp:
            assert resp.status == 200
    first_samples = await scrape(http, first)
    second_samples = await scrape(http, second)
    name = "gateproxy_forwarded_requests_total"
    assert value(first_samples, name, method="GET", status_class="2xx") == 3
    assert value(second_samples, name, method="GET", status_class="2xx") == 0


async def test_open_websockets_are_counted_while_relayed(
        start_standin: StartStandIn, runner: StandIn, make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    upstream = await start_standin(platform_server())
    gateway = await make_gateway(env_for(upstream, runner.url))
    echo = url(gateway, "/api/echo/ws")
    async with http.ws_connect(echo) as first, http.ws_connect(echo) as second:
        for ws in (first, second):
            await ws.send_str("ping")
            assert await ws.receive_str() == "ping"
        samples = await scrape(http, gateway)
        assert value(samples, "gateproxy_websockets_open") == 2
        await first.close()
        await wait_for(lambda: gateway.tunnels.open_count == 1)
        samples = await scrape(http, gateway)
        assert value(samples, "gateproxy_websockets_open") == 1
    await wait_for(lambda: gateway.tunnels.open_count == 0)
    samples = await scrape(http, gateway)
    assert value(samples, "gateproxy_websockets_open") == 0
    assert total(samples, "gateproxy_forwarded_requests_total") == 0, (
        "WebSocket sessions are not counted as forwarded requests")


def _families(text: str) -> list[tuple[object, ...]]:
    """The families of an exposition but the process's own, with their samples in
    order; `_created` samples by name and labels only (they hold the time each series
    was made)."""
    return [(m.name, m.documentation, m.type,
             [(s.name, s.labels, None if s.name.endswith("_created") else s.value)
              for s in m.samples])
            for m in text_string_to_metric_families(text) if not m.name.startswith("process_")]


def test_metrics_scrape_as_prometheus_client_metrics_would() -> None:
    """The metrics are plain numbers: fed the same events as prometheus-client's own
    Counter, Gauge and Histogram, they scrape to the same families, series and values,
    in the same order."""
    runner, other = DependencyStatus(dep(jitter_ms=0)), DependencyStatus(dep(name="other"))
    other.held = 2
    reconnector = Reconnector("http://127.0.0.1:1", 2000, 3000, 100)
    metrics = Metrics(lambda: [runner, other], lambda: 3, lambda: False, reconnector.outcomes,
                      lambda: True)
    reference = CollectorRegistry()
    up = Gauge("gateproxy_dependency_up",
               "1 while the dependency is up, 0 while down or unknown", ["dependency"],
               registry=reference)
    info = Gauge("gateproxy_dependency_info",
                 "Always 1: how each dependency is probed, and where",
                 ["dependency", "probe", "endpoint"], registry=reference)
    maintenance = Gauge("gateproxy_dependency_maintenance",
                        "1 while the dependency is in maintenance (by hand)", ["dependency"],
                        registry=reference)
    held = Gauge("gateproxy_held_requests",
                 "Gated requests waiting for the dependency (hold_ms)", ["dependency"],
                 registry=reference)
    for status in (runner, other):
        name = status.dep.name
        up.labels(name).set(0)
        info.labels(name, status.dep.probe, status.base_url).set(1)
        maintenance.labels(name).set(0)
        held.labels(name).set(status.held)
    Gauge("gateproxy_upstream_up",
          "1 while the platform-server accepts connections (as this process's last "
          "connection found it; with workers, as every one of them found it), 0 while "
          "it refuses them",
          registry=reference).set(0)
    retries = Counter(
        "gateproxy_upstream_retries",
        "Requests that met the platform-server down (upstream.retry_connect_ms), by "
        "how their wait ended", ["outcome"], registry=reference)
    for outcome, times in [("forwarded", 3), ("timed_out", 1), ("cancelled", 0),
                           ("rejected", 2)]:
        reconnector.outcomes[outcome] += times
        retries.labels(outcome).inc(times)
    Gauge("gateproxy_ready", "1 while ready answers 200, else 0", registry=reference).set(1)
    probes = Counter("gateproxy_probes", "Readiness probes by result and errorCode",
                     ["dependency", "result", "error_code"], registry=reference)
    probe_seconds = Histogram("gateproxy_probe_duration_seconds",
                              "Duration of readiness probes", ["dependency"],
                              registry=reference)
    gated = Counter("gateproxy_gated_requests", "Requests answered 503 by the gate",
                    ["dependency", "route"], registry=reference)
    forwarded = Counter(
        "gateproxy_forwarded_requests",
        "HTTP requests forwarded upstream, by method and by the class of the status "
        "sent back (WebSocket sessions: gateproxy_websockets_open)",
        ["method", "status_class"], registry=reference)
    for method in (*METHOD_CLASSES, OTHER):
        for status_class in STATUS_CLASSES:
            forwarded.labels(method, status_class)
    latency = Histogram(
        "gateproxy_upstream_latency_seconds",
        "Time from sending a request upstream to receiving its response headers",
        registry=reference)
    Gauge("gateproxy_websockets_open", "WebSocket sessions being relayed",
          registry=reference).set(3)
    reloads = Counter("gateproxy_config_reloads", "Configuration reloads by result",
                      ["result"], registry=reference)
    for result in ("applied", "rejected"):
        reloads.labels(result)
    holds = Counter("gateproxy_hold_outcomes",
                    "Held requests (hold_ms) by how their wait ended",
                    ["dependency", "outcome"], registry=reference)
    denied = Counter(
        "gateproxy_admin_denied",
        "Attempts to change state on the admin port that were refused, by error code "
        "(forbidden: not on the loopback and no admin_token set; unauthorized: no "
        "valid token)", ["code"], registry=reference)

    for status, probe in [(runner, ProbeResult(12, None)), (runner, ProbeResult(1200, REFUSED)),
                          (other, ProbeResult(3, None)), (runner, ProbeResult(7, None))]:
        metrics.observe_probe(status, probe)
        error = probe.error
        probes.labels(status.dep.name, "success" if error is None else "failure",
                      "" if error is None else error.code).inc()
        probe_seconds.labels(status.dep.name).observe(probe.duration_ms / 1000)
    for dependency, route in [("runner", "/api/a"), ("runner", "/api/b"), ("db", "/x"),
                              ("runner", "/api/a")]:
        metrics.count_gated(dependency, route)
        gated.labels(dependency, route).inc()
    for method, status_code in [("GET", 200), ("GET", 200), ("POST", 404), ("PROPFIND", 405),
                                ("GET", 101), ("DELETE", 700), ("GET", 999), ("PUT", 503)]:
        metrics.count_forwarded(method, status_code)
        method_class = method if method in METHOD_CLASSES else OTHER
        forwarded.labels(method_class, STATUS_CLASSES[status_code // 100]).inc()
    # Bounds themselves (0.005, 10), between them, beyond the last, zero.
    for seconds in (0.0, 0.001, 0.005, 0.0051, 0.3, 2.5, 10.0, 11.0, 0.07):
        metrics.observe_upstream(seconds)
        latency.observe(seconds)
    for applied in (True, False, False):
        metrics.count_reload(applied)
        reloads.labels("applied" if applied else "rejected").inc()
    for dependency, outcome in [("runner", "forwarded"), ("runner", "gated"),
                                ("runner", "forwarded")]:
        metrics.count_hold(dependency, outcome)
        holds.labels(dependency, outcome).inc()
    metrics.count_admin_denied("forbidden")
    denied.labels("forbidden").inc()

    ours = _families(exposition(metrics))
    # (the text parser reads `_created` samples as families of their own)
    assert len({f[0] for f in ours if not str(f[0]).endswith("_created")}) == 16
    assert ours == _families(generate_latest(reference).decode())
