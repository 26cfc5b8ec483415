"""What one request costs in Python, without sockets: gateproxy against the yardstick, and
what each part of gateproxy's policy adds.

Both proxies run in this process with stand-in transports on both sides (nothing is
sent; the upstream's answer, a 92-byte JSON with nginx's five header lines, is handed to
the upstream connection's `data_received`), so the figures are CPU time of Python and
the parsers alone, free of the kernel and of the other processes on the machine: the
most stable measure this machine has. A part is "taken out" by replacing it with its
own result for this request, computed once; the difference is what it costs.

    .venv/bin/python bench/per_request.py            # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import yardstick  # noqa: E402

from gateproxy import config, logs  # noqa: E402
from gateproxy.demo.standins import docker_runner  # noqa: E402
from gateproxy.engine import upstream as engine_upstream  # noqa: E402
from gateproxy.engine import wire  # noqa: E402
from gateproxy.engine.connection import Connection  # noqa: E402
from gateproxy.serve.gateway import Gateway  # noqa: E402

ANSWER = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 08 Dec 2026 01:47:24 GMT\r\n"
          b"Content-Type: application/json\r\nContent-Length: 92\r\nConnection: keep-alive\r\n"
          b'\r\n{"status":"ok","service":"platform-server","items":[1,2,3],'
          b'"padding":"0123456789abcdef0123"}')
GATED = "/api/containers"


class Transport:
    """A transport that keeps what is written (and forgets it between runs)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        self.out.extend(data)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: bench\r\n\r\n".encode()


def cost(one: Callable[[], None], check: Callable[[], bool], count: int) -> float:
    """Microseconds of CPU per call of `one`: the median of 5 runs of `count`."""
    for _ in range(1000):
        one()
    if not check():
        raise SystemExit("the warm-up did not give the expected answer")
    runs = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(count):
            one()
        runs.append((time.process_time() - started) / count * 1e6)
    return statistics.median(runs)


class Harness:
    """One proxy's client connection and pooled upstream connection, on stand-ins."""

    def __init__(self, client: Any, upstream: Any) -> None:
        self.client_out = Transport()
        self.upstream_out = Transport()
        client.connection_made(self.client_out)
        upstream.connection_made(self.upstream_out)
        self.client, self.upstream = client, upstream

    def forwarded(self, data: bytes) -> Callable[[], None]:
        client, upstream, outs = self.client, self.upstream, (self.client_out.out,
                                                               self.upstream_out.out)

        def one() -> None:
            client.data_received(data)
            upstream.data_received(ANSWER)
            for out in outs:
                out.clear()
        return one

    def gated(self, data: bytes) -> Callable[[], None]:
        client, out = self.client, self.client_out.out

        def one() -> None:
            client.data_received(data)
            out.clear()
        return one

    def answers(self, status: bytes) -> Callable[[], bool]:
        def check() -> bool:
            self.client_out.out.clear()
            self.client.data_received(request("/api/ping" if status == b"200" else GATED))
            if status == b"200":
                self.upstream.data_received(ANSWER)
            return bool(self.client_out.out) and self.client_out.out[0].startswith(
                b"HTTP/1.1 " + status)
        return check


async def main(count: int) -> None:
    logs.configure("json", "ERROR")
    runner = web.AppRunner(docker_runner(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    runner_port = runner.addresses[0][1]

    async def gateway(runner_url: str) -> Gateway:
        gw = Gateway(config.load(None, {
            "PLATFORM_SERVER_URL": "http://127.0.0.1:9", "DOCKER_RUNNER_BASE_URL": runner_url,
            "GATEPROXY_PORT": "0", "DOCKER_RUNNER_CONNECT_PROBE_TIMEOUT_MS": "200"}))
        await gw.start()
        await asyncio.sleep(0.5)  # the first probe's answer
        return gw

    rows: list[tuple[str, float]] = []
    # The yardstick: forwarded, then its 503 (always on for its prefix).
    pool = yardstick.Pool("127.0.0.1", 9)
    up = yardstick.Upstream(pool)
    pool.idle.append(up)
    yard = Harness(yardstick.Client(pool, yardstick.Gate(GATED, None, yardstick.BODY)), up)
    rows.append(("yardstick, forwarded", cost(yard.forwarded(request("/api/ping")),
                                              yard.answers(b"200"), count)))
    # gateproxy, its dependency up: each part of the policy taken out in turn.
    gw = await gateway(f"http://127.0.0.1:{runner_port}")
    conn = engine_upstream.Connection(gw.upstream)
    assert gw.listener is not None
    proxy = Harness(Connection(gw.listener), conn)
    gw.upstream.release(conn)
    forwarded = proxy.forwarded(request("/api/ping"))
    check = proxy.answers(b"200")
    rows.append(("gateproxy, forwarded", cost(forwarded, check, count)))
    parts = take_out(gw)
    for name, (remove, restore) in parts.items():
        remove()
        rows.append((f"  without {name}", cost(forwarded, check, count)))
        restore()
    for remove, _ in parts.values():
        remove()
    rows.append(("  the core alone (all of these out)", cost(forwarded, check, count)))
    for _, restore in parts.values():
        restore()
    await gw.stop()
    # The 503: the yardstick's, then gateproxy's with its dependency down.
    rows.append(("yardstick, 503", cost(yard.gated(request(GATED)), yard.answers(b"503"),
                                        count)))
    await site.stop()
    gw = await gateway("http://127.0.0.1:9")
    assert gw.listener is not None
    proxy = Harness(Connection(gw.listener), engine_upstream.Connection(gw.upstream))
    rows.append(("gateproxy, 503", cost(proxy.gated(request(GATED)), proxy.answers(b"503"),
                                        count)))
    await gw.stop()
    await runner.cleanup()
    print_rows(rows)


def take_out(gw: Gateway) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """Each part of the forwarded GET's policy, with how to replace it by its result."""
    from gateproxy.engine.exchange import Exchange
    from gateproxy.http_rules.actions import ForwardPlan

    planner, metrics = gw.planner, gw.node.metrics
    exchange = Exchange(0.0)
    exchange.method, exchange.target = "GET", b"/api/ping"
    exchange.raw_headers = [(b"Host", b"localhost:8080"), (b"User-Agent", b"bench")]
    exchange.names = [b"host", b"user-agent"]
    head = exchange.head(("127.0.0.1", 40000), False)
    plan = planner.plan(head)
    assert isinstance(plan, ForwardPlan)
    lines = ANSWER.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    fields = [(name, value) for name, value in (line.split(b": ", 1) for line in lines)]
    reply = planner.respond(head, plan, 200, fields, [n.lower() for n, _ in fields], False)
    upstream_head = wire.request_head(gw.upstream.origin, "GET", plan.target, plan.fields,
                                      False, False)
    answer_head = wire.response_head(200, b"OK", reply.headers)

    def stub(value: object) -> Callable[..., object]:
        return lambda *args, **kwargs: value

    def swap(*places: tuple[object, str, object]
             ) -> tuple[Callable[[], None], Callable[[], None]]:
        """Replace each (object, attribute) by a stub returning the value; and back."""
        before = [(obj, name, getattr(obj, name)) for obj, name, _ in places]

        def remove() -> None:
            for obj, name, value in places:
                setattr(obj, name, stub(value))

        def restore() -> None:
            for obj, name, value in before:
                setattr(obj, name, value)
        return remove, restore

    return {
        "the request's plan (gate, checks, header rules)": swap((planner, "plan", plan)),
        "the answer's plan (respond)": swap((planner, "respond", reply)),
        "writing the two heads": swap((wire, "request_head", upstream_head),
                                      (wire, "response_head", answer_head)),
        "the metrics": swap((metrics, "count_forwarded", None),
                            (metrics, "observe_upstream", None)),
    }


def print_rows(rows: list[tuple[str, float]]) -> None:
    figures = dict(rows)
    print(f"{'CPU per request, no sockets (median of 5 runs)':58s} {'us':>8s}")
    for name, micros in rows:
        print(f"{name:58s} {micros:8.2f}")
    forwarded, core = figures["gateproxy, forwarded"], figures[
        "  the core alone (all of these out)"]
    yard, yard_503 = figures["yardstick, forwarded"], figures["yardstick, 503"]
    print(f"\nforwarded: gateproxy / yardstick {forwarded / yard:.2f}x; the core alone "
          f"{core / yard:.2f}x; the policy {forwarded - core:.2f} us of {forwarded:.2f}")
    print(f"503: gateproxy / yardstick {figures['gateproxy, 503'] / yard_503:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="requests per run")
    import uvloop

    uvloop.run(main(parser.parse_args().count))
