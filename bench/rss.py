"""Each process's memory with `workers: 2`: a real `gateproxy serve` between the demo's
stand-ins, read from /proc when idle and after wrk's small GETs and 1 MiB downloads.

    .venv/bin/python bench/rss.py

Per process, in MiB: VmHWM (the peak) and VmRSS from /proc/PID/status; from
/proc/PID/smaps_rollup, Anonymous (the heap: Python's objects, its modules' code) and
Pss (resident memory with each shared page split between the processes that map it:
their sum is what the pod is charged). The RSS of each counts the shared libraries again
(about 15 MiB: the interpreter's, OpenSSL's, uvloop's, the C extensions'). Needs wrk.
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
    print(f"{when}:")
    for role, pid in processes:
        print(f"  {role:10} " + "  ".join(f"{k} {v:5.1f}" for k, v in memory(pid).items()))


async def main() -> None:
    runner = StandIn(docker_runner())
    await runner.start()
    app = platform_server(runner)

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=BIG)

    app.router.add_get("/big", big)
    upstream = StandIn(app)
    await upstream.start()
    config = Path(tempfile.mkdtemp()) / "gateproxy.yaml"
    config.write_text(f"listen: {{host: 127.0.0.1, port: 0}}\nworkers: 2\n"
                      f"upstream: {{url: '{upstream.url}'}}\n"
                      f"dependencies:\n  - name: docker-runner\n"
                      f"    base_url: '{runner.url}'\n    gated_routes: [/api/containers]\n")
    proxy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateproxy", "serve", "--config", str(config),
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "GATEPROXY_LOG_FORMAT": "json"})
    assert proxy.stderr is not None
    port, listening = 0, 0
    while listening < 2:
        line = orjson.loads(await proxy.stderr.readline())
        port = line.get("port", port) if line["event"] == "supervising" else port
        listening += line["event"] == "listening"
    logs = asyncio.get_running_loop().create_task(proxy.stderr.read())
    try:
        await asyncio.sleep(1.5)  # the workers' first reports
        processes = [("supervisor", proxy.pid), *(("worker", w) for w in children(proxy.pid))]
        show("idle", processes)
        for name, path, connections in LOAD:
            wrk = await asyncio.create_subprocess_exec(
                "wrk", "-t1", f"-c{connections}", "-d3", f"http://127.0.0.1:{port}{path}",
                stdout=asyncio.subprocess.DEVNULL)
            await wrk.wait()
            show(f"after {name} (wrk -c{connections}, 3 s)", processes)
    finally:
        proxy.send_signal(signal.SIGTERM)
        await proxy.wait()
        await logs
        await upstream.stop()
        await runner.stop()


if __name__ == "__main__":
    asyncio.run(main())
