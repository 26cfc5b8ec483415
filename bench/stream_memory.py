"""Bounded memory under streaming: 1 GiB down and 1 GiB up through a real
`gateproxy serve` process, with the proxy's peak RSS (goal: under 80 MiB).

Starts on 127.0.0.1, each as a subprocess it stops by PID at the end: an upstream that
streams N bytes down (`GET /down`, Content-Length) and counts what it is sent
(`POST /up`), and `python -m gateproxy serve` with a temporary YAML configuration.
This process is the client: one download, then one upload, then both at once, each of
`--size` MiB. The proxy's RSS is polled every 20 ms and its high-water mark (VmHWM)
read at the end.

    .venv/bin/python bench/stream_memory.py              # 1024 MiB each way
    .venv/bin/python bench/stream_memory.py --size 64    # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

HOST = "127.0.0.1"
CHUNK = 256 * 1024
MIB = 1024 * 1024
GOAL_MIB = 80

UPSTREAM = """
import sys
from aiohttp import web

CHUNK = bytes(range(256)) * 1024  # 256 KiB

async def down(request):
    size = int(request.query["size"])
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = size
    await resp.prepare(request)
    sent = 0
    while sent < size:
        piece = CHUNK if size - sent >= len(CHUNK) else CHUNK[:size - sent]
        await resp.write(piece)
        sent += len(piece)
    await resp.write_eof()
    return resp

async def up(request):
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
    return web.Response(text=str(received))

app = web.Application()
app.router.add_get("/down", down)
app.router.add_post("/up", up)
web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


class Peak:
    """The highest VmRSS seen while polling."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kib = 0

    async def poll(self) -> None:
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                self.kib = max(self.kib, status_kib(self.pid, "VmRSS"))
            await asyncio.sleep(0.02)


async def wait_until_up(url: str, deadline_s: float = 15.0) -> None:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - started < deadline_s:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {deadline_s} s")


async def download(http: aiohttp.ClientSession, base: str, size: int) -> float:
    started = time.monotonic()
    received = 0
    async with http.get(f"{base}/down?size={size}") as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_any():
            received += len(chunk)
    if received != size:
        raise RuntimeError(f"downloaded {received} bytes of {size}")
    return time.monotonic() - started


async def upload(http: aiohttp.ClientSession, base: str, size: int) -> float:
    piece = bytes(range(256)) * (CHUNK // 256)

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            yield piece if left >= len(piece) else piece[:left]
            left -= len(piece)

    started = time.monotonic()
    async with http.post(f"{base}/up", data=body(),
                         headers={"Content-Length": str(size)}) as resp:
        answer = await resp.text()
    if resp.status != 200 or int(answer) != size:
        raise RuntimeError(f"uploaded {answer} bytes of {size} (status {resp.status})")
    return time.monotonic() - started


async def measure(proxy_pid: int, base: str, size: int) -> dict[str, float]:
    peak = Peak(proxy_pid)
    poller = asyncio.ensure_future(peak.poll())
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    results: dict[str, float] = {}
    try:
        await asyncio.sleep(0.2)
        results["rss_idle_mib"] = status_kib(proxy_pid, "VmRSS") / 1024
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            results["down_s"] = await download(http, base, size)
            results["up_s"] = await upload(http, base, size)
            both = time.monotonic()
            await asyncio.gather(download(http, base, size), upload(http, base, size))
            results["both_s"] = time.monotonic() - both
    finally:
        poller.cancel()
    results["rss_peak_polled_mib"] = peak.kib / 1024
    results["rss_hwm_mib"] = status_kib(proxy_pid, "VmHWM") / 1024
    return results


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one process this script started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB each way (1024)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after (s)")
    args = parser.parse_args()
    size = args.size * MIB
    upstream_port, proxy_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEPROXY_", "DOCKER_RUNNER_", "PLATFORM_SERVER_URL"))}
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="gateproxy-bench-") as tmp:
        config = Path(tmp) / "gateproxy.yaml"
        config.write_text(
            f"listen: {{host: {HOST}, port: {proxy_port}}}\n"
            f"upstream: {{url: 'http://{HOST}:{upstream_port}'}}\n"
            "log: {format: json, level: WARNING, access: false}\n"
            "shutdown_delay_ms: 0\nshutdown_grace_ms: 1000\ndependencies: []\n")
        log = (Path(tmp) / "proxy.log").open("wb")
        try:
            started.append(subprocess.Popen(
                [sys.executable, "-c", UPSTREAM, HOST, str(upstream_port)], env=env))
            proxy = subprocess.Popen(
                [sys.executable, "-m", "gateproxy", "serve", "--config", str(config)],
                env=env, stderr=log)
            started.append(proxy)
            base = f"http://{HOST}:{proxy_port}"

            async def run() -> dict[str, float]:
                await wait_until_up(f"http://{HOST}:{upstream_port}/down?size=0")
                await wait_until_up(f"{base}/_gateproxy/live")
                return await asyncio.wait_for(measure(proxy.pid, base, size), args.timeout)

            results = asyncio.run(run())
        finally:
            for proc in reversed(started):
                stop(proc)
            log.close()
    mib = size / MIB
    print(f"gateproxy serve (pid {proxy.pid}), "
          f"{args.size} MiB each way, loopback, "
          f"python {sys.version.split()[0]}, uvloop "
          f"{'off' if os.environ.get('GATEPROXY_UVLOOP') == '0' else 'on if installed'}")
    print(f"  download      {mib / results['down_s']:8.1f} MiB/s  ({results['down_s']:.1f} s)")
    print(f"  upload        {mib / results['up_s']:8.1f} MiB/s  ({results['up_s']:.1f} s)")
    print(f"  both at once  {2 * mib / results['both_s']:8.1f} MiB/s  "
          f"({results['both_s']:.1f} s for {2 * args.size} MiB)")
    print(f"  proxy RSS: idle {results['rss_idle_mib']:.1f} MiB, peak polled "
          f"{results['rss_peak_polled_mib']:.1f} MiB, VmHWM {results['rss_hwm_mib']:.1f} MiB "
          f"(goal < {GOAL_MIB} MiB)")
    ok = results["rss_hwm_mib"] < GOAL_MIB
    print(f"RESULT down_mib_s={mib / results['down_s']:.1f} up_mib_s={mib / results['up_s']:.1f} "
          f"both_mib_s={2 * mib / results['both_s']:.1f} "
          f"peak_rss_mib={results['rss_hwm_mib']:.1f} within_goal={ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
