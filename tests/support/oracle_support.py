"""The router oracle's machinery: the Node routers of tests/support/routers (real Fastify 5 and
Express 5), real `gateproxy serve` processes in front of them with docker-runner down, and
spellings sent over raw sockets both through gateproxy and straight to the router.

What ran is read from the routers' own records, never through gateproxy's code: a record
of a gated handler reached through gateproxy is a bypass; a spelling the router gives to
a non-gated handler that gateproxy answers with 503 is over-gating.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.support.node import node_binary
from tests.support.ports import free_port
from tests.support.rawclient import read_exchange

ROUTERS_DIR = Path(__file__).parent / "routers"
ROUTER_NAMES = ("fastify", "express")
HOST = "platform.test"
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
# Spellings that gateproxy gates "when in doubt" (an encoded slash or backslash, a
# backslash, ;params): over-gating there is by design and not counted against the limit.
DOUBT_MARKERS = ("%2f", "%5c", "\\", ";")
_CONCURRENCY = 24
_ids = itertools.count(1)
NO_ROUTE = "(no route)"  # the handler name of the routers' 404s (tests/support/routers/server.js)


@dataclass(frozen=True)
class Spelling:
    """One request as the client writes it."""

    method: str
    target: str
    preflight: bool = False  # OPTIONS with Origin and Access-Control-Request-Method
    upgrade: bool = False  # a WebSocket handshake (GET with Upgrade: websocket)
    keep_alive: bool = False  # no `Connection: close`: gateproxy's fast path may take it

    def __str__(self) -> str:
        flags = [name for name in ("preflight", "upgrade", "keep_alive") if getattr(self, name)]
        return f"{self.method} {self.target}" + (f" [{', '.join(flags)}]" if flags else "")

    def __repr__(self) -> str:
        # Short, for hypothesis's falsifying examples: the flags only when set.
        flags = "".join(f", {name}=True" for name in ("preflight", "upgrade", "keep_alive")
                        if getattr(self, name))
        return f"Spelling({self.method!r}, {self.target!r}{flags})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis's pretty printer: one line, as repr

    @property
    def in_doubt(self) -> bool:
        path = self.target.split("?", 1)[0].split("#", 1)[0].lower()
        return any(marker in path for marker in DOUBT_MARKERS)

    def wire(self, oracle_id: int) -> bytes:
        """The request's bytes; `X-Oracle-Id` ties the routers' records to this send."""
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {HOST}",
                 f"X-Oracle-Id: {oracle_id}"]
        if self.preflight:
            lines += ["Origin: http://app.test", "Access-Control-Request-Method: DELETE"]
        if self.upgrade:
            lines += ["Upgrade: websocket", "Connection: Upgrade",
                      f"Sec-WebSocket-Key: {WS_KEY}", "Sec-WebSocket-Version: 13"]
        elif not self.keep_alive:
            lines.append("Connection: close")
        if self.method == "POST":
            lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class Record:
    """What a router says it ran."""

    router: str
    handler: str
    gated: bool
    method: str
    url: str
    params: dict[str, str]

    def __str__(self) -> str:
        return f"{self.router}:{self.handler} {self.method} {self.url!r} {self.params}"

    @property
    def routed(self) -> bool:
        """A route's handler ran (not the router's 404, which is recorded too)."""
        return self.handler != NO_ROUTE


@dataclass
class Outcome:
    """One spelling sent to one router, through gateproxy and straight."""

    spelling: Spelling
    router: str
    proxy_status: int | None = None
    proxy_body: bytes = b""
    direct_status: int | None = None
    proxy_runs: list[Record] = field(default_factory=list)
    direct_runs: list[Record] = field(default_factory=list)

    @property
    def bypass(self) -> bool:
        return any(run.gated for run in self.proxy_runs)

    @property
    def gated_by_proxy(self) -> bool:
        # A HEAD answer has no body to name the code by.
        return self.proxy_status == 503 and (
            self.spelling.method == "HEAD" or b"docker_runner_not_ready" in self.proxy_body)

    @property
    def over_gated(self) -> bool:
        """The router serves it with a non-gated handler; gateproxy answered 503."""
        routed = [run for run in self.direct_runs if run.routed]
        return self.gated_by_proxy and bool(routed) and not any(run.gated for run in routed)

    def describe(self) -> str:
        ran = "; ".join(str(run) for run in self.proxy_runs) or "nothing"
        return f"{self.router}: {self.spelling} -> {self.proxy_status}, ran {ran}"


class Routers:
    """The Node process of tests/support/routers/server.js."""

    def __init__(self, log: Path) -> None:
        self._log = log.open("wb")
        self.popen = subprocess.Popen(
            [node_binary(), "server.js"], cwd=ROUTERS_DIR, stdout=subprocess.PIPE,
            stderr=self._log)
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            self.stop()
            raise AssertionError(f"tests/support/routers/server.js did not start: see {log}")
        self.ports: dict[str, int] = orjson.loads(line)

    def take_records(self) -> list[tuple[str | None, Record]]:
        """The records since the last call (the control endpoint clears them)."""
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.ports['control']}/records", timeout=10) as resp:
            raw = orjson.loads(resp.read())
        return [(item["oracleId"], Record(item["router"], item["handler"], item["gated"],
                                          item["method"], item["url"], item["params"]))
                for item in raw]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self._log.close()


class Proxy:
    """A `gateproxy serve` process in front of one router, its docker-runner down."""

    def __init__(self, workdir: Path, upstream_port: int) -> None:
        self.port = free_port()
        config = workdir / "gateproxy.yaml"
        config.write_text("\n".join([
            f"listen: {{host: 127.0.0.1, port: {self.port}}}",
            f"upstream: {{url: 'http://127.0.0.1:{upstream_port}'}}",
            "shutdown_delay_ms: 0",
            "shutdown_grace_ms: 1000",
            "log: {level: WARNING}",
            "dependencies:",
            "  - name: docker-runner",
            "    health_key: dockerRunner",
            f"    base_url: 'http://127.0.0.1:{free_port()}'",
            "    optional: true",
            "    probe_interval_ms: 200",
            "    probe_timeout_ms: 500",
            "    retry: {base_delay_ms: 50, max_delay_ms: 200, jitter_ms: 0}",
            "    not_ready: {code: docker_runner_not_ready, message: docker-runner not ready}",
            "    gated_routes:",
            "      - /api/containers",
            "      - {prefix: /test/workspaces, methods: [POST]}",
        ]) + "\n")
        self._log = (workdir / "gateproxy.log").open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gateproxy", "serve", "--config", str(config)],
            stdout=self._log, stderr=self._log)

    def wait_until_down(self, timeout: float = 20.0) -> None:
        """Until status.json reports docker-runner `down` (not `unknown`)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/_gateproxy/status.json"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    deps = orjson.loads(resp.read())["dependencies"]
                if deps[0]["status"] == "down":
                    return
            except OSError:
                pass
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateproxy on {self.port} never saw docker-runner down")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self._log.close()


@dataclass
class Oracle:
    routers: Routers
    proxies: dict[str, Proxy]

    def run(self, spellings: Iterable[Spelling]) -> list[Outcome]:
        """Send every spelling to every router, through its gateproxy and straight, and
        attach what each router recorded."""
        outcomes = [Outcome(spelling, router)
                    for spelling in spellings for router in ROUTER_NAMES]
        sends = {next(_ids): (outcome, via) for outcome in outcomes for via in ("proxy", "direct")}
        asyncio.run(self._send_all(sends))
        for oracle_id, record in self.routers.take_records():
            found = sends.get(int(oracle_id)) if oracle_id and oracle_id.isdigit() else None
            if found is None:
                # Only this module talks to these routers: a record it cannot place is a
                # request it did not expect, so it shows as a run through the proxy.
                outcomes.append(Outcome(Spelling("?", record.url), record.router,
                                        proxy_runs=[record]))
                continue
            outcome, via = found
            (outcome.proxy_runs if via == "proxy" else outcome.direct_runs).append(record)
        return outcomes

    async def _send_all(self, sends: dict[int, tuple[Outcome, str]]) -> None:
        limit = asyncio.Semaphore(_CONCURRENCY)

        async def send(oracle_id: int, outcome: Outcome, via: str) -> None:
            port = self.proxies[outcome.router].port if via == "proxy" \
                else self.routers.ports[outcome.router]
            async with limit:
                status, body = await _exchange(port, outcome.spelling, oracle_id)
            if via == "proxy":
                outcome.proxy_status, outcome.proxy_body = status, body
            else:
                outcome.direct_status = status

        await asyncio.gather(*(send(oracle_id, outcome, via)
                               for oracle_id, (outcome, via) in sends.items()))


async def _exchange(port: int, spelling: Spelling, oracle_id: int) -> tuple[int | None, bytes]:
    """Status and body of the answer (None: the server closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            writer.write(spelling.wire(oracle_id))
            await writer.drain()
            answer = await read_exchange(reader, spelling.method)
            return answer.status, answer.body
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        return None, b""
    finally:
        writer.close()


@dataclass
class Tally:
    """Running totals over the module, for its one-line summary."""

    sent: int = 0
    distinct: set[Spelling] = field(default_factory=set)
    bypasses: list[Outcome] = field(default_factory=list)
    generated: set[Spelling] = field(default_factory=set)
    # Generated spellings the routers serve with a non-gated handler and gateproxy
    # answers with 503, outside the "when in doubt" families.
    over_gated: dict[Spelling, Outcome] = field(default_factory=dict)

    def add(self, outcomes: list[Outcome], generated: bool) -> None:
        spellings = {outcome.spelling for outcome in outcomes}
        self.sent += len(spellings)
        self.distinct |= spellings
        self.bypasses += [outcome for outcome in outcomes if outcome.bypass]
        if generated:
            self.generated |= spellings
            self.over_gated.update((o.spelling, o) for o in outcomes
                                   if o.over_gated and not o.spelling.in_doubt)

    @property
    def counted(self) -> int:
        """The generated spellings over-gating is measured against."""
        return sum(1 for spelling in self.generated if not spelling.in_doubt)

    @property
    def over_gated_pct(self) -> float:
        return 100.0 * len(self.over_gated) / max(self.counted, 1)

    def summary(self) -> str:
        return (f"router oracle: {self.sent} spellings sent ({len(self.distinct)} distinct,"
                f" {len(self.generated)} generated) x {len(ROUTER_NAMES)} routers;"
                f" {len(self.bypasses)} gated-handler runs through gateproxy; over-gating"
                f" {len(self.over_gated)} of {self.counted} generated spellings outside the"
                f" 'when in doubt' families ({self.over_gated_pct:.2f} %)")


def first_distinct(outcomes: Iterable[Outcome], count: int = 20) -> Iterator[str]:
    seen: set[str] = set()
    for outcome in outcomes:
        line = outcome.describe()
        if line not in seen:
            seen.add(line)
            yield line
            if len(seen) == count:
                return
