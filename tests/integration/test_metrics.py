"""Prometheus metrics after known traffic, through a real Gateway between stand-ins."""

from __future__ import annotations

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric

from gateproxy.demo.standins import StandIn, docker_runner, platform_server
from gateproxy.serve.gateway import Gateway
from gateproxy.upstream.reconnect import Reconnector
from gateproxy.views.metrics import CONTENT_TYPE, METHOD_CLASSES, OTHER, STATUS_CLASSES, Metrics
from tests.support.gateways import MakeGateway, env_for, url
from tests.support.metric_samples import Samples, parse, total, value
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
    samples = parse(gateway.node.metrics.exposition().decode())
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
        await wait_for(lambda: gateway.websockets.open_count == 1)
        samples = await scrape(http, gateway)
        assert value(samples, "gateproxy_websockets_open") == 1
    await wait_for(lambda: gateway.websockets.open_count == 0)
    samples = await scrape(http, gateway)
    assert value(samples, "gateproxy_websockets_open") == 0
    assert total(samples, "gateproxy_forwarded_requests_total") == 0, (
        "WebSocket sessions are not counted as forwarded requests")


def _families(metrics: list[Metric], names: set[str]) -> list[tuple[object, ...]]:
    """The families named, with their samples in order; `_created` samples by name and
    labels only (they hold the time each series was made)."""
    return [(m.name, m.documentation, m.type,
             [(s.name, s.labels, None if s.name.endswith("_created") else s.value)
              for s in m.samples])
            for m in metrics if m.name in names]


def test_request_counts_scrape_as_prometheus_client_metrics_would() -> None:
    """The per-request metrics are plain ints: fed the same events as prometheus-client's
    own Counter and Histogram, they scrape to the same families, series and values."""
    reconnector = Reconnector("http://127.0.0.1:1", 2000, 3000, 100)
    metrics = Metrics(lambda: [], lambda: 0, lambda: True, reconnector.outcomes, lambda: True)
    reference = CollectorRegistry()
    retries = Counter(
        "gateproxy_upstream_retries",
        "Requests that met the platform-server down (upstream.retry_connect_ms), by "
        "how their wait ended", ["outcome"], registry=reference)
    for outcome, times in [("forwarded", 3), ("timed_out", 1), ("cancelled", 0),
                           ("rejected", 2)]:
        reconnector.outcomes[outcome] += times
        retries.labels(outcome).inc(times)
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

    for dependency, route in [("runner", "/api/a"), ("runner", "/api/b"), ("db", "/x"),
                              ("runner", "/api/a")]:
        metrics.count_gated(dependency, route)
        gated.labels(dependency, route).inc()
    for method, status in [("GET", 200), ("GET", 200), ("POST", 404), ("PROPFIND", 405),
                           ("GET", 101), ("DELETE", 700), ("GET", 999), ("PUT", 503)]:
        metrics.count_forwarded(method, status)
        method_class = method if method in METHOD_CLASSES else OTHER
        forwarded.labels(method_class, STATUS_CLASSES[status // 100]).inc()
    # Bounds themselves (0.005, 10), between them, beyond the last, zero.
    for seconds in (0.0, 0.001, 0.005, 0.0051, 0.3, 2.5, 10.0, 11.0, 0.07):
        metrics.observe_upstream(seconds)
        latency.observe(seconds)

    names = ["gateproxy_upstream_retries", "gateproxy_gated_requests",
             "gateproxy_forwarded_requests", "gateproxy_upstream_latency_seconds"]
    ours = _families(list(metrics.registry.collect()), set(names))
    assert [family[0] for family in ours] == names, "in the order they always came"
    assert ours == _families(list(reference.collect()), set(names))
