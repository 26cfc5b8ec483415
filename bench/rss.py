"""Each process's memory with `workers: 1` and with `workers: 2`: a real `gateproxy serve`
between the demo's stand-ins, read from /proc when idle and after wrk's small GETs and
1 MiB downloads.

    .venv/bin/python bench/rss.py

Per process, in MiB: VmHWM (the peak) and VmRSS from /proc/PID/status; from
/proc/PID/smaps_rollup, Anonymous (the heap: Python's objects, its modules' code) and
Pss (resident memory with each shared page split between the processes that map it:
their sum is what the pod is charged). The RSS of each counts the shared libraries again
(about 15 MiB: the interpreter's, OpenSSL's, uvloop's, the C extensions'). Goals: the
peak of the one process of `workers: 1` <= 60 MiB; with `workers: 2`, the peaks of the
supervisor and its workers added up <= 120 MiB. Needs wrk; exit code 0 when both are met.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

import orjson
from aiohttp import web

from gateproxy.demo.standins import StandIn, docker_runner, platform_server

BIG = os.urandom(1 << 20)
LOAD = (("small GETs", "/api/threads", 64), ("1 MiB GETs", "/big", 16))
GOALS_MIB = {1: 60.0, 2: 120.0}  # workers: the most that all processes' peaks add up to


def memory(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            found[line.split(":")[0]] = int(line.split()[1]) / 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Anonymous:", "Pss:")):
            found[line.split(":")[0]] = int(line.split()[1]) / 1024
    return found


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def show(when: str, processes: list[tuple[str, int]]) -> None:
    print(f"  {when}:")
    for role, pid in processes:
        print(f"    {role:10} " + "  ".join(f"{k} {v:5.1f}" for k, v in memory(pid).items()))


async def measure(workers: int, upstream: StandIn, runner: StandIn, tmp: Path) -> float:
    """The peaks (VmHWM, MiB) of a `gateproxy serve` with `workers`, all its processes
    added up, after the load."""
    config = tmp / f"gateproxy-{workers}.yaml"
    config.write_text(f"listen: {{host: 127.0.0.1, port: 0}}\nworkers: {workers}\n"
                      f"upstream: {{url: '{upstream.url}'}}\n"
                      "log: {format: json, level: INFO, access: false}\n"
                      f"dependencies:\n  - name: docker-runner\n"
                      f"    base_url: '{runner.url}'\n    gated_routes: [/api/containers]\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEPROXY_", "DOCKER_RUNNER_", "PLATFORM_SERVER_URL"))}
    proxy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateproxy", "serve", "--config", str(config),
        stderr=asyncio.subprocess.PIPE, env=env)
    assert proxy.stderr is not None
    port, listening = 0, 0
    logs: asyncio.Task[bytes] | None = None
    try:
        while listening < workers:
            raw = await asyncio.wait_for(proxy.stderr.readline(), 20)
            if not raw:
                raise SystemExit(f"rss: gateproxy (workers: {workers}) exited")
            if not raw.startswith(b"{"):
                continue
            line = orjson.loads(raw)
            if line["event"] in ("supervising", "listening"):
                port = line.get("port", port) or port
            listening += line["event"] == "listening"
        logs = asyncio.get_running_loop().create_task(proxy.stderr.read())
        await asyncio.sleep(1.5)  # the workers' first reports
        processes = [("process" if workers == 1 else "supervisor", proxy.pid),
                     *(("worker", w) for w in children(proxy.pid))]
        print(f"workers: {workers} (pid {proxy.pid}, port {port})")
        show("idle", processes)
        for name, path, connections in LOAD:
            wrk = await asyncio.create_subprocess_exec(
                "wrk", "-t1", f"-c{connections}", "-d3", f"http://127.0.0.1:{port}{path}",
                stdout=asyncio.subprocess.DEVNULL)
            await wrk.wait()
            show(f"after {name} (wrk -c{connections}, 3 s)", processes)
        return sum(memory(pid)["VmHWM"] for _, pid in processes)
    finally:
        if proxy.returncode is None:
            proxy.send_signal(signal.SIGTERM)  # this PID only: the supervisor stops its workers
            await proxy.wait()
        if logs is not None:
            await logs


async def main() -> int:
    runner = StandIn(docker_runner())
    await runner.start()
    app = platform_server(runner)

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=BIG)

    app.router.add_get("/big", big)
    upstream = StandIn(app)
    await upstream.start()
    peaks = {}
    try:
        with tempfile.TemporaryDirectory(prefix="gateproxy-rss-") as tmp:
            for workers in GOALS_MIB:
                peaks[workers] = await measure(workers, upstream, runner, Path(tmp))
    finally:
        await upstream.stop()
        await runner.stop()
    print()
    met = 0
    for workers, bound in GOALS_MIB.items():
        ok = peaks[workers] <= bound
        met += ok
        print(f"goal {'met   ' if ok else 'MISSED'}  workers: {workers}: peak RSS of all "
              f"processes <= {bound:.0f} MiB  (measured {peaks[workers]:.1f})")
    print(f"RESULT peak_rss_mib_w1={peaks[1]:.1f} peak_rss_mib_w2={peaks[2]:.1f} "
          f"goals_met={met}/{len(GOALS_MIB)}")
    return 0 if met == len(GOALS_MIB) else 1


async def until_done_or_signalled() -> int:
    """`main`, cancelled by SIGTERM or SIGINT, so that its `finally` stops what it started."""
    task = asyncio.ensure_future(main())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 130


if __name__ == "__main__":
    sys.exit(asyncio.run(until_done_or_signalled()))
