#!/usr/bin/env python3
"""A bounded soak of a real `gateproxy serve` process, on loopback only.

For `--minutes` (default 10) it sends mixed traffic through the proxy: forwarded GETs
and uploads, gated requests, Server-Sent Events streams, WebSocket sessions, and
clients that abandon their requests half way, while docker-runner flaps (up a few
seconds, down a few seconds) and the configuration file is rewritten and reloaded with
SIGHUP twice. Then it sends SIGTERM under the same load. It reports requests sent,
answered and failed per kind, gated answers that disagree with docker-runner's actual
state, and the proxy's RSS and open descriptors at the start and the end.

The stand-in platform-server and docker-runner run in this process; gateproxy runs as a
child process, and is the only process this script ever signals (by its PID). Exit code
0 when every goal is met: no failed request, no gated answer out of step for longer than
the detection delay, RSS and descriptors within 10 %, a clean exit 0 after SIGTERM with
no in-flight request failed.

    .venv/bin/python bench/soak.py                 # 10 minutes
    .venv/bin/python bench/soak.py --minutes 1     # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateproxy.demo.standins import StandIn, docker_runner, platform_server  # noqa: E402

NOT_READY = b'{"error":{"code":"docker_runner_not_ready","message":"docker-runner not ready"}}'
SHUTDOWN_DELAY_MS = 4000
SHUTDOWN_GRACE_MS = 15000
# How late the proxy may notice a change of docker-runner: a probe interval, its timeout
# and a recheck, with room for a loaded machine. Gated answers older than that must match.
DETECTION_S = 3.0
WINDOW = 30  # samples (seconds) behind "start" and "end"
SSE_EVENTS = 10
WS_MESSAGES = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the upstream -----------------------------------------------------------------------

class Upstream:
    """The stand-in platform-server, plus an upload digest and a slow endpoint that
    counts the requests it is serving (so that abandoned ones can be seen to end: its
    runner cancels a handler whose connection the proxy closed)."""

    def __init__(self) -> None:
        self.slow_in_flight = 0
        self.slow_cancelled = 0
        self.app = platform_server()
        self.app.router.add_post("/soak/upload", self.upload)
        self.app.router.add_get("/soak/slow", self.slow)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        async for chunk in request.content.iter_any():
            digest.update(chunk)
        return web.json_response({"sha256": digest.hexdigest()})

    async def slow(self, request: web.Request) -> web.StreamResponse:
        self.slow_in_flight += 1
        try:
            await asyncio.sleep(float(request.query.get("delay", "5")))
            return web.json_response({"slow": True})
        except asyncio.CancelledError:
            self.slow_cancelled += 1
            raise
        finally:
            self.slow_in_flight -= 1


# --- docker-runner, flapping ------------------------------------------------------------

class Runner:
    """docker-runner on a fixed port, switched on and off; remembers when."""

    def __init__(self) -> None:
        self.standin = StandIn(docker_runner(), port=free_port())
        self.changes: list[tuple[float, bool]] = []  # (monotonic time, up)
        self.flips = 0

    @property
    def url(self) -> str:
        return self.standin.url

    async def set(self, up: bool) -> None:
        await (self.standin.start() if up else self.standin.stop())
        self.changes.append((time.monotonic(), up))
        self.flips += 1

    def settled(self, at: float) -> bool | None:
        """docker-runner's state at `at` if it had held it for DETECTION_S, else None."""
        state: bool | None = None
        since = 0.0
        for when, up in self.changes:
            if when > at:
                break
            state, since = up, when
        if state is None or at - since < DETECTION_S:
            return None
        return state

    async def flap(self, stop: asyncio.Event, rng: random.Random) -> None:
        while not stop.is_set():
            up = not self.standin.running
            await self.set(up)
            hold = rng.uniform(6, 15) if up else rng.uniform(4, 9)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), hold)
        if not self.standin.running:
            await self.set(True)


# --- the proxy process ------------------------------------------------------------------

def write_config(path: Path, port: int, upstream: str, runner: str, version: int) -> None:
    # Each version differs in something a reload applies (probe timing, log level and
    # one extra gated prefix), so that a reload is visible in status.json's hash.
    extra = f", /soak/gated-v{version}" if version > 1 else ""
    path.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"upstream: {{url: '{upstream}'}}\n"
        f"log: {{level: {'INFO' if version % 2 else 'WARNING'}}}\n"
        f"shutdown_delay_ms: {SHUTDOWN_DELAY_MS}\n"
        f"shutdown_grace_ms: {SHUTDOWN_GRACE_MS}\n"
        "dependencies:\n"
        "  - name: docker-runner\n"
        f"    base_url: '{runner}'\n"
        f"    probe_interval_ms: {1000 + 100 * version}\n"
        "    probe_timeout_ms: 1000\n"
        "    retry: {base_delay_ms: 200, max_delay_ms: 2000, jitter_ms: 100}\n"
        f"    gated_routes: [/api/containers{extra}]\n")


def start_proxy(cfg: Path, stderr_path: Path) -> subprocess.Popen[bytes]:
    """`gateproxy serve` as a child process, its JSON logs into `stderr_path`; none of
    the caller's gateproxy settings leak in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEPROXY_", "DOCKER_RUNNER_", "PLATFORM_SERVER"))}
    with open(stderr_path, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "gateproxy", "serve", "--config", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=ROOT)


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- traffic ----------------------------------------------------------------------------

@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    abandoned: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    gated: Counter[str] = field(default_factory=Counter)  # "503 up", "200 down", ...
    mismatches: list[str] = field(default_factory=list)
    in_flight: int = 0
    in_flight_at_sigterm: int = 0
    sent_after_sigterm: int = 0
    failed_after_sigterm: int = 0

    def fail(self, kind: str, what: str) -> None:
        self.failed[kind] += 1
        if len(self.failures) < 20:
            self.failures.append(f"{kind}: {what}")


class Traffic:
    def __init__(self, base: str, runner: Runner, tally: Tally, rng: random.Random) -> None:
        self.base = base
        self.runner = runner
        self.tally = tally
        self.rng = rng
        self.launching = True
        self.sigterm_at: float | None = None

    async def one(self, kind: str, call: Callable[[], Awaitable[None]]) -> None:
        tally = self.tally
        tally.sent[kind] += 1
        after_sigterm = self.sigterm_at is not None
        if after_sigterm:
            tally.sent_after_sigterm += 1
        tally.in_flight += 1
        try:
            await call()
            tally.answered[kind] += 1
        except AssertionError as exc:
            tally.fail(kind, str(exc)[:200])
            if after_sigterm:
                tally.failed_after_sigterm += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            tally.fail(kind, f"{type(exc).__name__}: {exc}"[:200])
            if after_sigterm:
                tally.failed_after_sigterm += 1
        finally:
            tally.in_flight -= 1

    async def forwarded(self, http: aiohttp.ClientSession) -> None:
        async with http.get(self.base + "/api/threads") as resp:
            body = await resp.read()
            assert resp.status == 200, f"status {resp.status}: {body[:100]!r}"

    async def upload(self, http: aiohttp.ClientSession) -> None:
        data = self.rng.randbytes(self.rng.choice((1024, 65536, 1 << 20)))
        async with http.post(self.base + "/soak/upload", data=data) as resp:
            assert resp.status == 200, f"status {resp.status}"
            got = (await resp.json())["sha256"]
            assert got == hashlib.sha256(data).hexdigest(), "the body changed on its way"

    async def gated(self, http: aiohttp.ClientSession) -> None:
        sent = time.monotonic()
        async with http.get(self.base + "/api/containers") as resp:
            body = await resp.read()
            status = resp.status
        assert status in (200, 503), f"status {status}"
        if status == 503:
            assert body == NOT_READY, f"a 503 that is not the gate's: {body[:100]!r}"
        # Judged against docker-runner's actual state, when it had held it long enough
        # before the request for the proxy to know.
        truth = self.runner.settled(sent)
        state = "unsettled" if truth is None else "up" if truth else "down"
        if truth is not None and (status == 200) != truth:
            self.tally.mismatches.append(f"{status} while docker-runner {state}")
        self.tally.gated[f"{status} while {state}"] += 1

    async def sse(self, http: aiohttp.ClientSession) -> None:
        url = f"{self.base}/api/events/sse?count={SSE_EVENTS}&interval=0.1"
        async with http.get(url) as resp:
            assert resp.status == 200, f"status {resp.status}"
            body = await resp.read()
        assert body.count(b"event: tick") == SSE_EVENTS, f"{body.count(b'event: tick')} events"

    async def websocket(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(self.base.replace("http", "ws") + "/api/echo/ws",
                                   protocols=("echo",), receive_timeout=10) as ws:
            assert ws.protocol == "echo", f"subprotocol {ws.protocol!r}"
            for n in range(WS_MESSAGES):
                if n % 2:
                    payload = self.rng.randbytes(n * 100)
                    await ws.send_bytes(payload)
                    msg = await ws.receive()
                    assert msg.type is aiohttp.WSMsgType.BINARY and msg.data == payload
                else:
                    await ws.send_str(f"hello {n}")
                    msg = await ws.receive()
                    assert msg.type is aiohttp.WSMsgType.TEXT and msg.data == f"hello {n}"
            await ws.close()
        assert ws.close_code == 1000, f"close code {ws.close_code}"

    async def abandon(self, http: aiohttp.ClientSession) -> None:
        """Start a slow request or a stream, and walk away from it."""
        if self.rng.random() < 0.5:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rng.uniform(0.05, 0.5)):
                    async with http.get(self.base + "/soak/slow?delay=5") as resp:
                        await resp.read()
        else:
            url = f"{self.base}/api/events/sse?count=50&interval=0.1"
            async with http.get(url) as resp:
                await resp.content.readuntil(b"\n\n")
                resp.close()  # hang up mid-stream
        self.tally.abandoned["requests"] += 1

    async def worker(self, kind: str, call: Callable[[aiohttp.ClientSession], Awaitable[None]],
                     http: aiohttp.ClientSession, pause: float) -> None:
        while self.launching:
            await self.one(kind, lambda: call(http))
            if pause:
                await asyncio.sleep(pause)


async def status_json(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(base + "/_gateproxy/status.json") as resp:
        data: dict[str, Any] = await resp.json()
        return data


# --- the run ----------------------------------------------------------------------------

async def soak(minutes: float, seed: int) -> int:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="gateproxy-soak-"))
    upstream = Upstream()
    runner = Runner()
    await upstream.start()
    await runner.set(True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = tmp / "gateproxy.yaml"
    write_config(cfg, port, upstream.url, runner.url, 1)
    stderr_path = tmp / "gateproxy.log"
    proc = start_proxy(cfg, stderr_path)
    print(f"soak: {minutes:g} min, gateproxy pid {proc.pid} on {base}, logs in {stderr_path}",
          flush=True)
    tally = Tally()
    report: dict[str, Any] = {"minutes": minutes, "seed": seed}
    ok = True
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.get(base + "/_gateproxy/live") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("gateproxy did not start; see " + str(stderr_path))
                await asyncio.sleep(0.1)
            ok = await run_load(http, base, proc, cfg, upstream, runner, tally, rng, minutes,
                                report)
    finally:
        if proc.poll() is None:  # never left behind: this PID is ours
            proc.kill()
            proc.wait(10)
        await upstream.stop()
        await runner.standin.stop()
    lines = [json.loads(line) for line in stderr_path.read_text().splitlines()
             if line.startswith("{")]
    levels = Counter(line["level"] for line in lines)
    events = Counter(line["event"] for line in lines)
    report["proxy_log"] = {"lines": len(lines), "by_level": dict(levels),
                           "config_reloaded": events["config_reloaded"],
                           "probe_failed": events["probe_failed"],
                           "dependency_recovered": events["dependency_recovered"],
                           "lines_per_minute": round(len(lines) / max(minutes, 0.01), 1)}
    unexpected = [line for line in lines if line["level"] in ("ERROR", "CRITICAL")
                  and line["event"] not in ("probe_failed",)]
    report["proxy_log"]["unexpected_errors"] = [
        {k: line.get(k) for k in ("event", "message")} for line in unexpected[:5]]
    ok = ok and not unexpected
    print_report(report, tally)
    (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nreport: {tmp / 'report.json'}")
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


async def run_load(http: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes],
                   cfg: Path, upstream: Upstream, runner: Runner, tally: Tally,
                   rng: random.Random, minutes: float, report: dict[str, Any]) -> bool:
    traffic = Traffic(base, runner, tally, rng)
    mix: list[tuple[str, Callable[[aiohttp.ClientSession], Awaitable[None]], int, float]] = [
        ("forwarded", traffic.forwarded, 6, 0.0),
        ("upload", traffic.upload, 1, 0.05),
        ("gated", traffic.gated, 4, 0.0),
        ("sse", traffic.sse, 2, 0.0),
        ("websocket", traffic.websocket, 2, 0.0),
        ("abandoned", traffic.abandon, 1, 0.1),
    ]
    workers = [asyncio.create_task(traffic.worker(kind, call, http, pause))
               for kind, call, count, pause in mix for _ in range(count)]
    stop_flapping = asyncio.Event()
    flapper = asyncio.create_task(runner.flap(stop_flapping, rng))
    pid = proc.pid
    duration = minutes * 60
    started = time.monotonic()
    await asyncio.sleep(min(20.0, duration / 10))  # warm up: pools, caches, allocator
    # One sample a second; "start" and "end" are medians over WINDOW samples, since the
    # descriptors move with the connections in flight at the instant of a sample.
    samples: list[tuple[int, int]] = []
    reloads: list[dict[str, Any]] = []
    hashes = [(await status_json(http, base))["config"]["hash"]]
    reload_at = [started + duration / 3, started + 2 * duration / 3]
    next_progress = time.monotonic() + 60
    while time.monotonic() - started < duration:
        await asyncio.sleep(1)
        samples.append((proc_rss_kib(pid), proc_fds(pid)))
        if reload_at and time.monotonic() >= reload_at[0]:
            reload_at.pop(0)
            version = len(reloads) + 2
            write_config(cfg, proc_port(base), upstream.url, runner.url, version)
            os.kill(pid, signal.SIGHUP)  # our child, by PID
            await asyncio.sleep(2)
            new_hash = (await status_json(http, base))["config"]["hash"]
            reloads.append({"version": version, "applied": new_hash != hashes[-1]})
            hashes.append(new_hash)
        if time.monotonic() >= next_progress:
            next_progress += 60
            print(f"  {round((time.monotonic() - started) / 60)} min: sent "
                  f"{sum(tally.sent.values())}, failed {sum(tally.failed.values())}, "
                  f"RSS {samples[-1][0] // 1024} MiB, fds {samples[-1][1]}, "
                  f"flips {runner.flips}", flush=True)
        if proc.poll() is not None:
            break
    window = max(1, min(WINDOW, len(samples) // 3))
    rss_start = int(statistics.median(r for r, _ in samples[:window]))
    fds_start = int(statistics.median(f for _, f in samples[:window]))
    rss_end = int(statistics.median(r for r, _ in samples[-window:]))
    fds_end = int(statistics.median(f for _, f in samples[-window:]))
    stop_flapping.set()
    await flapper
    # SIGTERM under load: ready turns 503, everything else is served through the delay;
    # launching stops a second before the listener closes, and every request already
    # sent must then finish.
    tally.in_flight_at_sigterm = tally.in_flight
    traffic.sigterm_at = time.monotonic()
    os.kill(pid, signal.SIGTERM)  # our child, by PID
    await asyncio.sleep(0.3)
    async with http.get(base + "/_gateproxy/ready") as resp:
        ready_after_sigterm = resp.status
    await asyncio.sleep(SHUTDOWN_DELAY_MS / 1000 - 1.3)
    traffic.launching = False
    await asyncio.wait_for(asyncio.gather(*workers), SHUTDOWN_GRACE_MS / 1000)
    exit_code = await asyncio.to_thread(proc.wait, SHUTDOWN_GRACE_MS / 1000 + 10)
    await asyncio.sleep(0.5)
    leaked_slow = upstream.slow_in_flight
    report.update({
        "requests": {"sent": dict(tally.sent), "answered": dict(tally.answered),
                     "failed": dict(tally.failed), "abandoned": dict(tally.abandoned)},
        "totals": {"sent": sum(tally.sent.values()), "answered": sum(tally.answered.values()),
                   "failed": sum(tally.failed.values())},
        "failures": tally.failures,
        "gated": dict(tally.gated), "gated_mismatches": len(tally.mismatches),
        "gated_mismatch_examples": tally.mismatches[:5],
        "docker_runner_flips": runner.flips,
        "reloads": reloads,
        "rss_kib": {"start": rss_start, "end": rss_end, "max": max(r for r, _ in samples),
                    "change_pct": round(100 * (rss_end - rss_start) / rss_start, 1)},
        "fds": {"start": fds_start, "end": fds_end, "max": max(f for _, f in samples),
                "change_pct": round(100 * (fds_end - fds_start) / max(fds_start, 1), 1)},
        "samples": len(samples), "sample_window": window,
        "sigterm": {"in_flight_at_sigterm": tally.in_flight_at_sigterm,
                    "sent_during_drain": tally.sent_after_sigterm,
                    "failed": tally.failed_after_sigterm,
                    "ready_status_after_sigterm": ready_after_sigterm,
                    "exit_code": exit_code},
        "upstream": {"abandoned_requests_cancelled_upstream": upstream.slow_cancelled,
                     "slow_requests_still_running": leaked_slow},
    })
    return (sum(tally.failed.values()) == 0 and not tally.mismatches
            and all(r["applied"] for r in reloads) and len(reloads) == 2
            and abs(report["rss_kib"]["change_pct"]) <= 10
            and abs(report["fds"]["change_pct"]) <= 10
            and exit_code == 0 and tally.failed_after_sigterm == 0
            and ready_after_sigterm == 503 and leaked_slow == 0)


def proc_port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def print_report(report: dict[str, Any], tally: Tally) -> None:
    print("\n=== gateproxy soak ===")
    print(f"duration           {report['minutes']:g} min (seed {report['seed']})")
    if "requests" not in report:
        print("no load was run")
        return
    req = report["requests"]
    print(f"{'kind':<12}{'sent':>10}{'answered':>10}{'failed':>8}")
    for kind in sorted(req["sent"]):
        print(f"{kind:<12}{req['sent'][kind]:>10}{req['answered'].get(kind, 0):>10}"
              f"{req['failed'].get(kind, 0):>8}")
    t = report["totals"]
    print(f"{'total':<12}{t['sent']:>10}{t['answered']:>10}{t['failed']:>8}")
    print(f"abandoned on purpose {req['abandoned'].get('requests', 0)} (upstream saw "
          f"{report['upstream']['abandoned_requests_cancelled_upstream']} cancelled, "
          f"{report['upstream']['slow_requests_still_running']} left running)")
    print(f"gated answers      {report['gated']}")
    print(f"gated mismatches   {report['gated_mismatches']} "
          f"(answers out of step with docker-runner for more than {DETECTION_S:g} s)")
    print(f"docker-runner      {report['docker_runner_flips']} state changes")
    print(f"reloads (SIGHUP)   {report['reloads']}")
    rss, fds = report["rss_kib"], report["fds"]
    print(f"RSS                start {rss['start'] // 1024} MiB, end {rss['end'] // 1024} MiB "
          f"({rss['change_pct']:+.1f} %), max {rss['max'] // 1024} MiB")
    print(f"open fds           start {fds['start']}, end {fds['end']} "
          f"({fds['change_pct']:+.1f} %), max {fds['max']}")
    print(f"                   (start, end: medians of {report['sample_window']} one-second "
          f"samples, {report['samples']} in all)")
    s = report["sigterm"]
    print(f"SIGTERM            {s['in_flight_at_sigterm']} in flight, {s['sent_during_drain']} "
          f"sent during the drain, {s['failed']} failed, ready -> "
          f"{s['ready_status_after_sigterm']}, exit code {s['exit_code']}")
    if "proxy_log" in report:
        pl = report["proxy_log"]
        print(f"proxy log          {pl['lines']} lines ({pl['lines_per_minute']}/min), "
              f"{pl['by_level']}, reloads {pl['config_reloaded']}, "
              f"unexpected errors {len(pl['unexpected_errors'])}")
    for failure in report["failures"]:
        print("  failure:", failure)


def main() -> int:
    # The stand-in upstream logs every SSE stream a client hung up on, with a traceback:
    # that is this script's own doing, not news.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="how long the load runs before SIGTERM (default 10)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    return asyncio.run(soak(args.minutes, args.seed))


if __name__ == "__main__":
    sys.exit(main())
