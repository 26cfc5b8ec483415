"""Several workers behind one port (`workers: N`, N > 1): the supervisor process.

The supervisor probes each dependency once (its Monitors are the only ones) and pushes
every result to the workers over the control channel (gateproxy/workers/control.py); it never
serves the proxy's port. Each worker is a `gateproxy worker` process that listens on the
same port with SO_REUSEPORT, so the kernel spreads connections over them, and whose gate
reads only its own memory. The supervisor:

- reserves the port first (bound, not listening: only workers accept), so that a taken
  port fails the start and `port: 0` resolves to one port for all;
- serves the admin endpoints, on `admin_port` and on a Unix socket through which the
  workers answer them on the proxy's port: one status page and one set of metrics, the
  workers' counts added up (gateproxy/workers/aggregate.py);
- restarts a worker that dies (with a pause that grows while it keeps dying), logging it;
- on SIGHUP or a file change reloads, then tells every worker to reload;
- on SIGTERM turns `ready` to 503, keeps everything served for `shutdown_delay_ms`, then
  tells the workers to drain (grace, WebSockets closed with 1001) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from gateproxy.core.dependency import DependencyStatus
from gateproxy.core.model import DEFAULTS_SOURCE, Config
from gateproxy.core.runtime import Runtime
from gateproxy.logs import log
from gateproxy.monitor.loop import Monitor
from gateproxy.monitor.probe import ProbeResult
from gateproxy.serve import admin_port
from gateproxy.serve.listeners import StartupError, until_signalled
from gateproxy.serve.node import Node
from gateproxy.serve.reload import Reloader
from gateproxy.views.counts import Family
from gateproxy.workers import aggregate, control

RESTART_PAUSE_S: Final = (0.5, 30.0)  # a worker that keeps dying waits longer each time
STABLE_S: Final = 10.0  # a worker that lived this long starts the pause from the bottom


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    pause_s: float = RESTART_PAUSE_S[0]


class Supervisor:
    """Probes, tells the workers, keeps them running; see the module's docstring."""

    def __init__(self, config: Config, workers: int) -> None:
        self.node = Node(config, self._watch)
        self.node.on_reload.append(lambda: self._broadcast({"t": "reload"}))
        self._workers = [_Worker(i) for i in range(workers)]
        self._dir = tempfile.mkdtemp(prefix="gateproxy-")  # mode 0700: ours alone
        self.control_path = os.path.join(self._dir, "control.sock")
        self.admin_path = os.path.join(self._dir, "admin.sock")
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    def _watch(self, node: Node, status: DependencyStatus) -> Monitor:
        return Monitor(status, node.prober, on_result=self._on_result,
                       on_maintenance=lambda s: self._broadcast(self._status_message(s)))

    # --- what the admin endpoints read (gateproxy/views/admin.py View) ---------------------

    @property
    def runtime(self) -> Runtime:
        return self.node.runtime

    @property
    def draining(self) -> bool:
        return self.node.draining

    @property
    def started_at(self) -> float:
        return self.node.started_at

    def statuses(self) -> list[DependencyStatus]:
        return self.node.statuses()

    @property
    def serving(self) -> bool:
        """A worker is connected, so listening: `ready` says 200 only from then on (kept
        in the node, whose `gateproxy_ready` reads it too)."""
        return self.node.serving

    def _connected_changed(self) -> None:
        self.node.serving = any(w.writer is not None for w in self._workers)

    def families(self) -> list[Family]:
        """Its own metrics and the workers', added up."""
        return aggregate.merge(self.node.families(),
                               [w.stats["metrics"] for w in self._workers if w.stats])

    def recent(self) -> dict[str, Any]:
        return aggregate.sum_recent(w.stats["recent"] for w in self._workers if w.stats)

    # --- the control channel -------------------------------------------------------------

    def _on_result(self, status: DependencyStatus, result: ProbeResult) -> None:
        self.node.metrics.observe_probe(status, result)
        self._broadcast(self._status_message(status))

    def _status_message(self, status: DependencyStatus) -> control.Message:
        return {"t": "status", "name": status.dep.name, "state": status.export()}

    def _broadcast(self, message: control.Message) -> None:
        data = control.encode(message)
        for worker in self._workers:
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write(data)

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        hello = await control.read(reader)
        if hello is None or hello.get("t") != "hello":
            writer.close()
            return
        worker = self._workers[int(hello["index"])]
        worker.writer = writer
        self._connected_changed()
        self._sync(worker)
        while (message := await control.read(reader)) is not None:
            kind = message.get("t")
            if kind == "recheck":
                guard = next((g for g in self.runtime.guards
                              if g.status.dep.name == message.get("name")), None)
                if guard is not None:
                    guard.monitor.request_recheck(str(message.get("trigger")))
            elif kind == "stats":
                worker.stats = {"metrics": message["metrics"], "recent": message["recent"]}
            elif kind == "sync":
                self._sync(worker)
        if worker.writer is writer:
            worker.writer = None
            worker.stats = {}
            self._connected_changed()

    def _sync(self, worker: _Worker) -> None:
        if worker.writer is not None:
            for status in self.statuses():
                worker.writer.write(control.encode(self._status_message(status)))

    # --- workers -------------------------------------------------------------------------

    def _command(self, worker: _Worker) -> list[str]:
        source = self.runtime.config.source
        config = [] if source == DEFAULTS_SOURCE else ["--config", source]
        return [sys.executable, "-m", "gateproxy", "worker", *config,
                "--control", self.control_path, "--admin", self.admin_path,
                "--port", str(self.port), "--index", str(worker.index)]

    async def _keep(self, worker: _Worker) -> None:
        """Run the worker, and again whenever it dies, until the supervisor stops."""
        while not self._stopping:
            worker.started = time.monotonic()
            worker.process = await asyncio.create_subprocess_exec(
                *self._command(worker), stdin=asyncio.subprocess.DEVNULL)
            code = await worker.process.wait()
            if self._stopping:
                return
            lived = time.monotonic() - worker.started
            worker.pause_s = RESTART_PAUSE_S[0] if lived > STABLE_S else min(
                worker.pause_s * 2, RESTART_PAUSE_S[1])
            log.error("worker_exited", worker=worker.index, pid=worker.process.pid,
                      exitCode=code, restartInMs=round(worker.pause_s * 1000))
            await asyncio.sleep(worker.pause_s)

    # --- running -------------------------------------------------------------------------

    def _reserve(self) -> socket.socket:
        """Bind the proxy's port without listening, with SO_REUSEPORT: the port is taken
        for the workers, and only theirs accept (a socket that does not listen gets no
        connections)."""
        cfg = self.runtime.config.listen
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                cfg.host, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            reserved = socket.socket(family, kind, proto)
            reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reserved.bind(address)
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.host}:{cfg.port}: "
                               f"{exc.strerror or exc}") from exc
        return reserved

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop as the module says."""
        node = self.node
        down = await node.required_down()
        if down is not None:
            raise StartupError(down)
        cfg = self.runtime.config
        reserved = self._reserve()
        self.port = int(reserved.getsockname()[1])
        control_server = await asyncio.start_unix_server(
            self._on_connect, self.control_path, limit=1 << 24)
        relayed = web.AppRunner(admin_port.application(self, denied=None))
        await relayed.setup()
        await web.UnixSite(relayed, self.admin_path).start()
        admin = None if cfg.admin_port is None else await admin_port.serve(
            self, cfg.listen.host, cfg.admin_port, denied=node.metrics.count_admin_denied)
        node.start_watching()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep(w)) for w in self._workers]
        log.info("supervising", host=cfg.listen.host, port=self.port,
                 workers=len(self._workers), adminPort=cfg.admin_port,
                 upstream=cfg.upstream.url,
                 dependencies=[s.dep.name for s in self.statuses()])
        try:
            async with Reloader(node).running():
                await until_signalled()
            await self._stop(reserved)
        finally:
            control_server.close()
            await relayed.cleanup()
            if admin is not None:
                await admin.close()
            await node.stop_watching()
            shutil.rmtree(self._dir, ignore_errors=True)
        log.info("stopped")

    async def _stop(self, reserved: socket.socket) -> None:
        cfg = self.runtime.config
        self.node.draining = True
        log.info("shutdown_requested", delayMs=cfg.shutdown_delay_ms)
        await asyncio.sleep(cfg.shutdown_delay_ms / 1000)
        self._stopping = True
        reserved.close()
        self._broadcast({"t": "stop"})
        log.info("closing_listeners", graceMs=cfg.shutdown_grace_ms)
        processes = [w.process for w in self._workers if w.process is not None]
        # The workers' own grace, and a few seconds for them to close and exit.
        deadline = cfg.shutdown_grace_ms / 1000 + 5
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await asyncio.gather(*(p.wait() for p in processes))
        for process in processes:
            if process.returncode is None:
                log.error("worker_killed", pid=process.pid, graceMs=cfg.shutdown_grace_ms)
                process.kill()
                await process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
