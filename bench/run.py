"""gateproxy against HAProxy doing the same job, on this machine, in one run.

Starts on 127.0.0.1: nginx (the upstream: ~100-byte JSON on /api/ping, a 1 MiB file on
/big), a stand-in docker-runner, HAProxy (one thread, `option httpchk`, the JSON 503 on
/api/containers while the runner is down), the naive calibration proxy
(bench/naive_proxy.py: the cost of forwarding with public APIs and nothing else), the
yardstick (bench/yardstick.py: a no-policy proxy on asyncio.Protocol, httptools and
uvloop, about the ceiling of Python on public parsers; its 503 follows a flag file that
this script creates when it stops the runner) and gateproxy (`python -m gateproxy serve`).
Then `wrk --latency` rounds, interleaved (A B C A B C ...), for small GETs, small GETs at
one connection (the latency each proxy adds over nginx direct, and its CPU per request),
1 MiB downloads and the 503 short-circuit with the runner stopped; gateproxy's peak RSS;
startup time; the gate's cost with 1 and 1000 prefixes; WebSocket echo through gateproxy
vs direct. Prints a table of medians, the ratios of those medians, each goal met or
missed, and a last line `RESULT key=value ...`.

Installs nothing: wrk, nginx and haproxy come from Debian
(`apt-get install -y wrk nginx-light haproxy`). Everything it starts it stops by PID.

    .venv/bin/python bench/run.py            # about 10 minutes
    .venv/bin/python bench/run.py --quick    # about 2.5 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Template

import aiohttp

from gateproxy import config as gateproxy_config
from gateproxy.serve.gateway import Gateway

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
GATED_BODY = '{"error":{"code":"docker_runner_not_ready","message":"docker-runner not ready"}}'
# ~100 bytes, like a small API answer.
PING_BODY = ('{"status":"ok","service":"platform-server","items":[1,2,3],'
             '"padding":"0123456789abcdef0123"}')
BIG_SIZE = 1 << 20
TOOLS = {"wrk": "wrk", "nginx": "nginx-light (or nginx)", "haproxy": "haproxy"}
# Environment variables that would override the benchmark's gateproxy configuration.
_CONFIG_ENV = re.compile(r"^(GATEPROXY_(?!UVLOOP)|DOCKER_RUNNER_|PLATFORM_SERVER_URL)")
CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of utime and stime in /proc/<pid>/stat

RUNNER_SCRIPT = """
import sys
from aiohttp import web
from gateproxy.demo.standins import docker_runner
web.run_app(docker_runner(), host=sys.argv[1], port=int(sys.argv[2]), access_log=None,
            print=None)
"""
ECHO_SCRIPT = """
import sys
from aiohttp import web
from gateproxy.demo.standins import platform_server
web.run_app(platform_server(), host=sys.argv[1], port=int(sys.argv[2]), access_log=None,
            print=None)
"""
WS_PATH = "/api/echo/ws"


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


# --- processes --------------------------------------------------------------------------


@dataclass
class Proc:
    """A process this benchmark started; stopped by its PID only."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, wait_s: float = 5.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        try:
            self.popen.wait(wait_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Procs:
    """Everything started, for the `finally` that stops it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     env=env, cwd=self.workdir)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0,
              proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise BenchError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():
                return
        time.sleep(0.02)
    tail = f":\n{proc.tail()}" if proc is not None else ""
    raise BenchError(f"timed out waiting for {what}{tail}")


def status_is(port: int, path: str, status: int) -> Callable[[], bool]:
    return lambda: get(port, path)[0] == status


def wait_gated(name: str, port: int) -> None:
    """Until `port` answers the gate's 503, and then check it byte for byte."""
    wait_for(f"{name} to answer 503", status_is(port, "/api/containers", 503))
    status, body = get(port, "/api/containers/abc")
    if status != 503 or body.decode() != GATED_BODY:
        raise BenchError(f"{name} answered {status} {body!r} on a gated path")


def peak_rss_each(pid: int) -> list[float]:
    """VmHWM in MiB, the most resident memory a process has ever had, of `pid` and then
    of each of its children (a supervisor's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            own = int(line.split()[1]) / 1024
            return [own, *(rss for c in children for rss in peak_rss_each(int(c)))]
    raise BenchError(f"no VmHWM for pid {pid}")


def cpu_ticks(pid: int) -> dict[int, int]:
    """utime + stime, in clock ticks, of `pid` and of each of its descendants (a
    supervisor's workers), by PID."""
    ticks = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        # A process may exit while it is read: it has no more CPU time to count.
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            # Field 2, the command, is in parentheses and may hold anything: split after it.
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks[p] = int(fields[11]) + int(fields[12])  # fields 14 and 15
            # A child is listed under the thread that started it.
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return ticks


def cpu_seconds_since(before: dict[int, int], pid: int) -> float:
    """CPU time of `pid` and its descendants since `before` (a cpu_ticks() of it). A
    process gone since then is left out rather than counted negative; a new one counts
    whole."""
    after = cpu_ticks(pid)
    return sum(t - before.get(p, 0) for p, t in after.items()) / CLK_TCK


# --- wrk --------------------------------------------------------------------------------


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    mib_s: float
    errors: int  # socket errors, and non-2xx answers where 2xx were expected
    requests: int
    cpu_s: float = float("nan")  # the target's processes' CPU time over the run, if measured


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise BenchError(f"wrk printed a latency I cannot read: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str, expect_2xx: bool) -> Run:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out, re.MULTILINE)
        if match is None:
            raise BenchError(f"unexpected wrk output:\n{out}")
        return match

    rps = float(find(r"^Requests/sec:\s+([\d.]+)").group(1))
    requests = int(find(r"^\s+(\d+) requests in ").group(1))
    transfer = find(r"^Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)")
    mib_s = float(transfer.group(1)) * _BYTES[transfer.group(2)] / (1 << 20)
    p50 = _duration_ms(find(r"^\s+50%\s+(\S+)").group(1))
    p99 = _duration_ms(find(r"^\s+99%\s+(\S+)").group(1))
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock is not None:
        errors += sum(int(n) for n in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx is not None and expect_2xx:
        errors += int(non2xx.group(1))
    return Run(rps, p50, p99, mib_s, errors, requests)


@dataclass
class Series:
    scenario: str
    target: str
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.runs))

    @property
    def rps(self) -> float:
        return self.median("rps")


@dataclass
class Settings:
    rounds: int
    duration: int  # seconds; wrk takes whole ones
    connections: int
    big_connections: int
    threads: int


def wrk(url: str, seconds: int, connections: int, threads: int, expect_2xx: bool) -> Run:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "5s", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout, expect_2xx)


def interleaved(scenario: str, targets: dict[str, str], settings: Settings,
                connections: int, expect_2xx: bool = True,
                cpu_of: dict[str, int] | None = None) -> list[Series]:
    """A B C A B C ...: each target runs once per round, after a short warm-up each.
    `cpu_of`: the PIDs of targets whose CPU time (with their descendants') each run
    records."""
    series = [Series(scenario, name) for name in targets]
    for url in targets.values():
        wrk(url, 1, connections, settings.threads, expect_2xx)
    for _ in range(settings.rounds):
        for s, url in zip(series, targets.values(), strict=True):
            pid = (cpu_of or {}).get(s.target)
            before = cpu_ticks(pid) if pid is not None else {}
            run = wrk(url, settings.duration, connections, settings.threads, expect_2xx)
            if pid is not None:
                run.cpu_s = cpu_seconds_since(before, pid)
            s.runs.append(run)
    return series


# --- the gate, in process ---------------------------------------------------------------


def judge_microseconds(configs: dict[str, Path]) -> dict[str, tuple[float, float]]:
    """Per configuration: microseconds per gate decision for a gated path and for one
    that is not (the dependency counts as down: every rule is live)."""

    async def measure() -> dict[str, tuple[float, float]]:
        out = {}
        for name, path in configs.items():
            gateway = Gateway(gateproxy_config.load(str(path), env={}))
            judge = gateway.node.gate.decide
            times = []
            for target in ("/api/containers/abc", "/api/ping"):
                best = float("inf")
                for _ in range(5):
                    start = time.perf_counter()
                    for _ in range(20000):
                        judge("GET", target, {})
                    best = min(best, (time.perf_counter() - start) / 20000 * 1e6)
                times.append(best)
            out[name] = (times[0], times[1])
            await gateway.upstream.close()
        return out

    return asyncio.run(measure())


# --- WebSocket --------------------------------------------------------------------------


@dataclass
class WsRun:
    rtt_p50_ms: float
    rtt_p99_ms: float
    msgs_s: float


async def _ws_round(url: str, seconds: float, window: int) -> WsRun:
    payload = "x" * 64
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        rtts: list[float] = []
        end = time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            start = time.perf_counter()
            await ws.send_str(payload)
            await ws.receive_str()
            rtts.append((time.perf_counter() - start) * 1000)
        # Throughput: `window` messages in flight on one connection.
        count = 0
        start = time.perf_counter()
        end = start + seconds / 2
        while time.perf_counter() < end:
            for _ in range(window):
                await ws.send_str(payload)
            for _ in range(window):
                await ws.receive_str()
            count += window
        msgs_s = count / (time.perf_counter() - start)
    rtts.sort()
    return WsRun(statistics.median(rtts), rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))],
                 msgs_s)


def websocket_rounds(targets: dict[str, str], settings: Settings) -> dict[str, list[WsRun]]:
    seconds = max(1, settings.duration)
    out: dict[str, list[WsRun]] = {name: [] for name in targets}
    for _ in range(settings.rounds):
        for name, url in targets.items():
            out[name].append(asyncio.run(_ws_round(url, seconds, 32)))
    return out


def ws_handshake_ok(port: int) -> bool:
    """True when a WebSocket upgrade through `port` reaches the echo server."""
    with socket.create_connection((HOST, port), timeout=2) as s:
        s.sendall(f"GET {WS_PATH} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        return s.recv(64).startswith(b"HTTP/1.1 101")


# --- the setup --------------------------------------------------------------------------


def render(template: str, dest: Path, **values: object) -> Path:
    text = Template((HERE / template).read_text()).substitute(
        {k: str(v) for k, v in values.items()})
    dest.write_text(text)
    return dest


def missing_tools() -> list[str]:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [tool for tool in TOOLS if shutil.which(tool, path=path) is None]


def tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")
    assert found is not None  # checked by missing_tools() before anything starts
    return found


class Bench:
    def __init__(self, workdir: Path, procs: Procs) -> None:
        self.dir = workdir
        self.procs = procs
        self.nginx_port = free_port()
        self.runner_port = free_port()
        self.haproxy_port = free_port()
        self.python = sys.executable
        self.env = {k: v for k, v in os.environ.items() if not _CONFIG_ENV.match(k)}
        self.runner: Proc | None = None

    # nginx, the runner, HAProxy

    def start_nginx(self) -> None:
        (self.dir / "big.bin").write_bytes(os.urandom(BIG_SIZE))
        conf = render("nginx.conf.tmpl", self.dir / "nginx.conf", dir=self.dir,
                      port=self.nginx_port, ping=PING_BODY)
        proc = self.procs.start("nginx", [tool("nginx"), "-p", str(self.dir), "-c", str(conf)])
        wait_for("nginx", status_is(self.nginx_port, "/api/ping", 200), proc=proc)

    def start_runner(self) -> None:
        self.runner = self.procs.start(
            "docker-runner", [self.python, "-c", RUNNER_SCRIPT, HOST, str(self.runner_port)],
            env=self.env)
        wait_for("the stand-in docker-runner", status_is(self.runner_port, "/v1/ready", 200),
                 proc=self.runner)

    def stop_runner(self) -> None:
        if self.runner is not None:
            self.runner.stop()

    def start_haproxy(self) -> Proc:
        conf = render("haproxy.cfg.tmpl", self.dir / "haproxy.cfg", port=self.haproxy_port,
                      body=GATED_BODY, upstream_port=self.nginx_port,
                      runner_port=self.runner_port)
        proc = self.procs.start("haproxy", [tool("haproxy"), "-db", "-f", str(conf)])
        wait_for("HAProxy", status_is(self.haproxy_port, "/api/ping", 200), proc=proc)
        return proc

    # the naive proxy, the yardstick, gateproxy

    def start_naive(self) -> tuple[Proc, int]:
        port = free_port()
        proc = self.procs.start("naive", [self.python, str(HERE / "naive_proxy.py"),
                                          str(port), str(self.nginx_port)], env=self.env)
        wait_for("the naive proxy", status_is(port, "/api/ping", 200), proc=proc)
        return proc, port

    @property
    def yardstick_flag(self) -> Path:
        """While this file exists the yardstick answers the 503 on /api/containers."""
        return self.dir / "yardstick-gated"

    def start_yardstick(self) -> tuple[Proc, int]:
        port = free_port()
        proc = self.procs.start("yardstick", [
            self.python, str(HERE / "yardstick.py"), "--port", str(port),
            "--upstream", f"{HOST}:{self.nginx_port}", "--gate-prefix", "/api/containers",
            "--gate-file", str(self.yardstick_flag), "--gate-body", GATED_BODY], env=self.env)
        wait_for("the yardstick", status_is(port, "/api/ping", 200), proc=proc)
        return proc, port

    def gateproxy_config(self, name: str, port: int, prefixes: int = 1,
                         upstream_port: int | None = None, workers: int = 1) -> Path:
        routes = ["/api/containers"]
        # Other prefixes under /api, so that a lookup of /api/... walks a crowded level.
        routes += [f"/api/g{i:04d}/items" for i in range(prefixes - 1)]
        return render("gateproxy.yaml.tmpl", self.dir / f"{name}.yaml", port=port,
                      upstream_port=upstream_port or self.nginx_port,
                      runner_port=self.runner_port, workers=workers,
                      routes="\n".join(f"      - {r}" for r in routes))

    def start_gateproxy(self, name: str, config: Path) -> Proc:
        return self.procs.start(name, [self.python, "-m", "gateproxy", "serve", "--config",
                                       str(config)], env=self.env)

    def gateproxy(self, name: str, prefixes: int = 1, upstream_port: int | None = None,
                  path: str = "/api/ping", status: int = 200, workers: int = 1
                  ) -> tuple[Proc, int]:
        port = free_port()
        proc = self.start_gateproxy(
            name, self.gateproxy_config(name, port, prefixes, upstream_port, workers))
        wait_for(name, status_is(port, path, status), proc=proc)
        return proc, port

    def startup_seconds(self) -> float:
        """Process start to the first proxied 200."""
        port = free_port()
        config = self.gateproxy_config("gateproxy-startup", port)
        request = f"GET /api/ping HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        start = time.perf_counter()
        proc = self.start_gateproxy("gateproxy-startup", config)
        try:
            while time.perf_counter() - start < 10:
                if not proc.alive():
                    raise BenchError(f"gateproxy exited:\n{proc.tail()}")
                try:
                    with socket.create_connection((HOST, port), timeout=1) as s:
                        s.sendall(request)
                        if s.recv(16).startswith(b"HTTP/1.1 200"):
                            return time.perf_counter() - start
                except OSError:
                    time.sleep(0.002)
            raise BenchError("gateproxy did not answer within 10 s")
        finally:
            proc.stop()
            self.procs.started.remove(proc)


# --- reporting --------------------------------------------------------------------------


def table(series: list[Series], ws: dict[str, list[WsRun]]) -> str:
    head = (f"{'scenario':<16}{'target':<16}{'rounds':>6}{'req/s med':>11}{'min':>10}"
            f"{'max':>10}{'p50 ms':>9}{'p99 ms':>9}{'MiB/s':>9}{'errors':>8}")
    lines = [head, "-" * len(head)]
    for s in series:
        rps = [r.rps for r in s.runs]
        lines.append(
            f"{s.scenario:<16}{s.target:<16}{len(s.runs):>6}{statistics.median(rps):>11.0f}"
            f"{min(rps):>10.0f}{max(rps):>10.0f}{s.median('p50_ms'):>9.2f}"
            f"{s.median('p99_ms'):>9.2f}{s.median('mib_s'):>9.1f}"
            f"{sum(r.errors for r in s.runs):>8}")
    if ws:
        lines.append("")
        lines.append(f"{'websocket echo':<32}{'rounds':>6}{'msg/s med':>11}{'min':>10}"
                     f"{'max':>10}{'rtt p50':>9}{'rtt p99':>9}")
        for name, runs in ws.items():
            msgs = [r.msgs_s for r in runs]
            lines.append(
                f"{name:<32}{len(runs):>6}{statistics.median(msgs):>11.0f}{min(msgs):>10.0f}"
                f"{max(msgs):>10.0f}{statistics.median(r.rtt_p50_ms for r in runs):>9.3f}"
                f"{statistics.median(r.rtt_p99_ms for r in runs):>9.3f}")
    return "\n".join(lines)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


@dataclass
class Added:
    """What a proxy costs at one connection, medians over the rounds."""

    p50_us: float  # latency added over nginx direct
    p99_us: float
    cpu_us_per_req: float  # the proxy's processes


def added(direct: Series, proxy: Series) -> Added:
    """The differences are taken round by round: the runs of a round are seconds apart, so
    what else the machine does weighs on both."""
    rounds = list(zip(direct.runs, proxy.runs, strict=True))
    return Added(
        statistics.median((p.p50_ms - d.p50_ms) * 1000 for d, p in rounds),
        statistics.median((p.p99_ms - d.p99_ms) * 1000 for d, p in rounds),
        statistics.median(ratio(p.cpu_s * 1e6, p.requests) for p in proxy.runs))


def one_connection_table(direct: Series, costs: dict[str, Added]) -> str:
    lines = [f"one connection (wrk -t1 -c1, /api/ping), medians of {len(direct.runs)} rounds;"
             f" nginx direct: p50 {direct.median('p50_ms') * 1000:.0f} us,"
             f" p99 {direct.median('p99_ms') * 1000:.0f} us",
             f"{'proxy':<16}{'added p50 us':>14}{'added p99 us':>14}{'CPU us/req':>12}"]
    for name, cost in costs.items():
        lines.append(f"{name:<16}{cost.p50_us:>14.0f}{cost.p99_us:>14.0f}"
                     f"{cost.cpu_us_per_req:>12.1f}")
    return "\n".join(lines)


# The rows of the ratios table: (label, scenario, attribute; None: one connection's added p50).
RATIO_ROWS = (("small GET req/s", "small GET", "rps"), ("small GET p99", "small GET", "p99_ms"),
              ("1-conn added p50", "1-conn GET", None), ("1 MiB GET MiB/s", "1 MiB GET", "mib_s"),
              ("503 gated req/s", "503 gated", "rps"))
RATIO_PAIRS = (("gateproxy", "haproxy"), ("gateproxy", "yardstick"), ("gateproxy", "naive"),
               ("yardstick", "haproxy"), ("naive", "haproxy"))


def ratios_table(by: dict[tuple[str, str], Series], costs: dict[str, Added]) -> str:
    """Each pair's ratio of medians per scenario ('-' where a target was not measured)."""
    lines = ["ratios of medians (p99 and added p50: lower is better)",
             f"{'':<18}" + "".join(f"{a + '/' + b:>20}" for a, b in RATIO_PAIRS)]
    for label, scenario, attr in RATIO_ROWS:
        cells = []
        for a, b in RATIO_PAIRS:
            if attr is None:
                value = ratio(costs[a].p50_us, costs[b].p50_us) if a in costs and b in costs \
                    else None
            elif (scenario, a) in by and (scenario, b) in by:
                value = ratio(by[scenario, a].median(attr), by[scenario, b].median(attr))
            else:
                value = None
            cells.append(f"{'-' if value is None else f'{value:.2f}':>20}")
        lines.append(f"{label:<18}" + "".join(cells))
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 2 s (about 2.5 minutes) instead of 4 of 5 s")
    parser.add_argument("--rounds", type=int, help="rounds per scenario")
    parser.add_argument("--duration", type=int, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64,
                        help="wrk connections for small GETs and 503s (64)")
    parser.add_argument("--big-connections", type=int, default=16,
                        help="wrk connections for 1 MiB downloads (16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--workers", type=int, default=2,
                        help="`workers` of the second gateproxy measured beside the one-process "
                        "one, for small GETs, 1 MiB downloads and its RSS (2; 0 leaves it out)")
    parser.add_argument("--skip-websocket", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print("bench: missing " + ", ".join(missing) + ". On Debian or Ubuntu:\n"
              "    apt-get update && apt-get install -y "
              + " ".join(TOOLS[m].split()[0] for m in missing), file=sys.stderr)
        return 2
    settings = Settings(
        rounds=args.rounds or (2 if args.quick else 4),
        duration=args.duration or (2 if args.quick else 5),
        connections=args.connections, big_connections=args.big_connections,
        threads=args.threads)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateproxy-bench-") as tmp:
        procs = Procs(Path(tmp))
        try:
            return run(Bench(Path(tmp), procs), settings, args, started)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()


def run(bench: Bench, settings: Settings, args: argparse.Namespace, started: float) -> int:
    print(f"bench: {settings.rounds} rounds x {settings.duration} s, wrk -t{settings.threads}"
          f" -c{settings.connections} (1 MiB: -c{settings.big_connections}), "
          f"{os.cpu_count()} CPUs, loopback", flush=True)
    bench.start_nginx()
    bench.start_runner()
    haproxy = bench.start_haproxy()
    naive, naive_port = bench.start_naive()
    yardstick, yardstick_port = bench.start_yardstick()
    gp, gp_port = bench.gateproxy("gateproxy")
    url = {
        "direct": f"http://{HOST}:{bench.nginx_port}",
        "haproxy": f"http://{HOST}:{bench.haproxy_port}",
        "naive": f"http://{HOST}:{naive_port}",
        "yardstick": f"http://{HOST}:{yardstick_port}",
        "gateproxy": f"http://{HOST}:{gp_port}",
    }
    gating = {"haproxy": bench.haproxy_port, "yardstick": yardstick_port, "gateproxy": gp_port}
    # The same with several worker processes, for small GETs and 1 MiB downloads.
    multi = f"gateproxy-{args.workers}w"
    wide_url = dict(url)
    if args.workers:
        gpw, gpw_port = bench.gateproxy(multi, workers=args.workers)
        wide_url[multi] = f"http://{HOST}:{gpw_port}"
    # With the runner up, the gating proxies forward the gated prefix: the configuration
    # works.
    for name, port in gating.items():
        wait_for(f"{name} to forward /api/containers", status_is(port, "/api/containers", 404))

    series: list[Series] = []
    print("bench: small GETs", flush=True)
    series += interleaved("small GET", {n: u + "/api/ping" for n, u in wide_url.items()},
                          settings, settings.connections)

    print("bench: small GETs at one connection", flush=True)
    # wrk wants at least one connection per thread.
    c1 = interleaved("1-conn GET", {n: u + "/api/ping" for n, u in url.items()},
                     replace(settings, threads=1), 1,
                     cpu_of={"haproxy": haproxy.pid, "naive": naive.pid,
                             "yardstick": yardstick.pid, "gateproxy": gp.pid})
    series += c1
    c1_direct, *c1_proxies = c1  # in the order of `url`: direct first
    c1_costs = {s.target: added(c1_direct, s) for s in c1_proxies}

    print("bench: 1 MiB downloads", flush=True)
    series += interleaved("1 MiB GET", {n: u + "/big" for n, u in wide_url.items()},
                          settings, settings.big_connections)
    rss = sum(peak_rss_each(gp.pid))
    multi_rss: list[float] = []
    if args.workers:
        multi_rss = peak_rss_each(gpw.pid)
        gpw.stop()  # the phases below measure the one-process gateproxy only
        bench.procs.started.remove(gpw)

    print("bench: 503 short-circuit (runner stopped)", flush=True)
    bench.stop_runner()
    bench.yardstick_flag.touch()
    for name, port in gating.items():
        wait_gated(name, port)
    series += interleaved(
        "503 gated", {n: url[n] + "/api/containers/abc" for n in gating},
        settings, settings.connections, expect_2xx=False)

    print("bench: gate cost, 1 vs 1000 prefixes", flush=True)
    # Two fresh processes alike but for their prefixes: the first one has a history
    # (pools, heap) the second would not.
    gate_url = {}
    for name, prefixes in (("1 prefix", 1), ("1000 prefixes", 1000)):
        _, port = bench.gateproxy(f"gateproxy-{prefixes}", prefixes=prefixes,
                                  path="/api/containers", status=503)
        wait_gated(name, port)
        gate_url[name] = f"http://{HOST}:{port}"
    # A 5 % difference is within one run's noise here: more, shorter rounds.
    gate_settings = replace(settings, rounds=2 * settings.rounds + 1,
                            duration=max(1, settings.duration // 2))
    gate_503 = interleaved("gate 503", {n: u + "/api/containers/abc"
                                        for n, u in gate_url.items()},
                           gate_settings, settings.connections, expect_2xx=False)
    gate_fwd = interleaved("gate forwarded", {n: u + "/api/ping" for n, u in gate_url.items()},
                           gate_settings, settings.connections)
    series += gate_503 + gate_fwd
    judge_us = judge_microseconds({"1 prefix": bench.dir / "gateproxy-1.yaml",
                                   "1000 prefixes": bench.dir / "gateproxy-1000.yaml"})

    print("bench: startup", flush=True)
    startups = [bench.startup_seconds() for _ in range(3 if args.quick else 5)]

    ws: dict[str, list[WsRun]] = {}
    if not args.skip_websocket:
        print("bench: WebSocket echo", flush=True)
        ws = websocket_phase(bench, settings)

    by = {(s.scenario, s.target): s for s in series}
    print()
    print(table(series, ws))
    print()
    print(one_connection_table(c1_direct, c1_costs))
    print()
    print(ratios_table(by, c1_costs))
    print(f"\nstartup (process start to first proxied 200), median of {len(startups)}: "
          f"{statistics.median(startups) * 1000:.0f} ms "
          f"(min {min(startups) * 1000:.0f}, max {max(startups) * 1000:.0f})")
    print(f"gateproxy peak RSS (VmHWM) after the 1 MiB downloads: {rss:.1f} MiB")
    if multi_rss:
        each = " + ".join(f"{m:.1f}" for m in multi_rss)
        print(f"{multi} peak RSS (VmHWM) after the 1 MiB downloads: {sum(multi_rss):.1f} MiB"
              f" (supervisor + workers: {each})")
    for name, (gated_us, passed_us) in judge_us.items():
        print(f"gate decision in process, {name}: {gated_us:.2f} us gated, "
              f"{passed_us:.2f} us not gated")
    print(f"bench took {time.monotonic() - started:.0f} s")

    def r(scenario: str, a: str, b: str, attr: str = "rps") -> float:
        return ratio(by[scenario, a].median(attr), by[scenario, b].median(attr))

    result = {
        "small_rps_vs_haproxy": r("small GET", "gateproxy", "haproxy"),
        "small_p99_vs_haproxy": r("small GET", "gateproxy", "haproxy", "p99_ms"),
        "small_rps_vs_direct": r("small GET", "gateproxy", "direct"),
        "small_rps_vs_naive": r("small GET", "gateproxy", "naive"),
        "small_rps_vs_yardstick": r("small GET", "gateproxy", "yardstick"),
        "small_p99_vs_yardstick": r("small GET", "gateproxy", "yardstick", "p99_ms"),
        "naive_rps_vs_haproxy": r("small GET", "naive", "haproxy"),
        "naive_p99_vs_haproxy": r("small GET", "naive", "haproxy", "p99_ms"),
        "yardstick_rps_vs_haproxy": r("small GET", "yardstick", "haproxy"),
        "yardstick_p99_vs_haproxy": r("small GET", "yardstick", "haproxy", "p99_ms"),
        "gated_rps_vs_haproxy": r("503 gated", "gateproxy", "haproxy"),
        "gated_rps_vs_yardstick": r("503 gated", "gateproxy", "yardstick"),
        "yardstick_gated_rps_vs_haproxy": r("503 gated", "yardstick", "haproxy"),
        "gated_vs_proxied": ratio(by["503 gated", "gateproxy"].rps,
                                  by["small GET", "gateproxy"].rps),
        "big_mibs_vs_haproxy": r("1 MiB GET", "gateproxy", "haproxy", "mib_s"),
        "big_mibs_vs_direct": r("1 MiB GET", "gateproxy", "direct", "mib_s"),
        "big_mibs_vs_yardstick": r("1 MiB GET", "gateproxy", "yardstick", "mib_s"),
        "naive_big_mibs_vs_haproxy": r("1 MiB GET", "naive", "haproxy", "mib_s"),
        "yardstick_big_mibs_vs_haproxy": r("1 MiB GET", "yardstick", "haproxy", "mib_s"),
        "peak_rss_mib": rss,
        "startup_s": statistics.median(startups),
        "gate_1000_vs_1_gated": r("gate 503", "1000 prefixes", "1 prefix"),
        "gate_1000_vs_1_forwarded": r("gate forwarded", "1000 prefixes", "1 prefix"),
        "judge_us_1": judge_us["1 prefix"][0],
        "judge_us_1000": judge_us["1000 prefixes"][0],
    }
    for name, cost in c1_costs.items():
        result[f"c1_added_p50_us_{name}"] = cost.p50_us
        result[f"c1_added_p99_us_{name}"] = cost.p99_us
        result[f"c1_cpu_us_per_req_{name}"] = cost.cpu_us_per_req
    result["c1_added_p50_vs_haproxy"] = ratio(c1_costs["gateproxy"].p50_us,
                                              c1_costs["haproxy"].p50_us)
    result["c1_added_p50_vs_yardstick"] = ratio(c1_costs["gateproxy"].p50_us,
                                                c1_costs["yardstick"].p50_us)
    result["c1_cpu_vs_yardstick"] = ratio(c1_costs["gateproxy"].cpu_us_per_req,
                                          c1_costs["yardstick"].cpu_us_per_req)
    if ws:
        def ws_median(name: str, attr: str) -> float:
            return float(statistics.median(getattr(run, attr) for run in ws[name]))

        result["ws_msgs_vs_direct"] = ratio(ws_median("gateproxy", "msgs_s"),
                                            ws_median("direct", "msgs_s"))
        result["ws_rtt_vs_direct"] = ratio(ws_median("gateproxy", "rtt_p50_ms"),
                                           ws_median("direct", "rtt_p50_ms"))
    if args.workers:
        result["workers"] = float(args.workers)
        result["workers_small_rps_vs_haproxy"] = r("small GET", multi, "haproxy")
        result["workers_small_p99_vs_haproxy"] = r("small GET", multi, "haproxy", "p99_ms")
        result["workers_big_mibs_vs_haproxy"] = r("1 MiB GET", multi, "haproxy", "mib_s")
        result["workers_peak_rss_mib"] = sum(multi_rss)
    # The goals, judged on this one run's medians: (what, the measured value, met).
    goals = [
        goal("small GETs, 1 process: req/s >= 0.6x HAProxy's",
             result["small_rps_vs_haproxy"], ">=", 0.6),
        goal("small GETs, 1 process: req/s >= 1.6x the naive proxy's",
             result["small_rps_vs_naive"], ">=", 1.6),
        goal("small GETs: p99 <= 1.5x HAProxy's", result["small_p99_vs_haproxy"], "<=", 1.5),
        goal("gated 503: req/s >= 0.8x HAProxy's", result["gated_rps_vs_haproxy"], ">=", 0.8),
        goal("one connection: added p50 <= 1.5x what HAProxy adds",
             result["c1_added_p50_vs_haproxy"], "<=", 1.5),
        goal("1 MiB downloads: MiB/s >= 1.0x HAProxy's", result["big_mibs_vs_haproxy"],
             ">=", 1.0),
        goal("peak RSS, workers: 1: <= 60 MiB", rss, "<=", 60),
        goal("startup: < 0.5 s", result["startup_s"], "<", 0.5),
    ]
    print()
    for name, value, ok in goals:
        print(f"goal {'met   ' if ok else 'MISSED'}  {name}  (measured {value:.3f})")
    errors = sum(run.errors for s in series for run in s.runs)
    if errors:
        print(f"bench: {errors} socket errors or unexpected statuses; see the table",
              file=sys.stderr)
    met = sum(ok for _, _, ok in goals)
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items())
          + f" goals_met={met}/{len(goals)}")
    return 0 if errors == 0 else 1


def goal(name: str, value: float, op: str, bound: float) -> tuple[str, float, bool]:
    """One goal: `value op bound` (NaN, a ratio that could not be taken, misses)."""
    ok = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
    return name, value, ok


def websocket_phase(bench: Bench, settings: Settings) -> dict[str, list[WsRun]]:
    echo_port = free_port()
    echo = bench.procs.start("echo", [bench.python, "-c", ECHO_SCRIPT, HOST, str(echo_port)],
                             env=bench.env)
    wait_for("the echo server", status_is(echo_port, "/api/threads", 200), proc=echo)
    _, gp_port = bench.gateproxy("gateproxy-ws", upstream_port=echo_port, path="/api/threads")
    try:
        usable = ws_handshake_ok(gp_port)
    except OSError:
        usable = False
    if not usable:
        print("bench: gateproxy does not relay WebSockets (yet); skipped", flush=True)
        return {}
    return websocket_rounds({"direct": f"ws://{HOST}:{echo_port}{WS_PATH}",
                             "gateproxy": f"ws://{HOST}:{gp_port}{WS_PATH}"}, settings)


if __name__ == "__main__":
    sys.exit(main())
