"""The control channel between the supervisor and its worker processes (`workers: N`),
and the worker's side of it.

One Unix socket, one JSON object per line. The supervisor probes; workers never do:

- supervisor -> worker: `status` (a dependency's state, after every probe), `reload`,
  `stop`;
- worker -> supervisor: `hello`, `recheck` (a gated request saw the dependency down),
  `sync` (send every status again, after a reload), `stats` (its metrics as numbers and
  its recent counts, every second, for the supervisor's one view of them).

A worker's gate reads only its own memory: `Follower`s hold statuses that mirror the
supervisor's. The proxy's own endpoints on the proxy port are the supervisor's, reached
over its admin socket, so that every worker shows the same status page and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import orjson

from gateproxy.core.answers import Answer
from gateproxy.core.dependency import DependencyStatus
from gateproxy.core.model import Dependency
from gateproxy.core.watch import GATED, HELD
from gateproxy.http_rules.actions import EndpointHandler, LocalRequest
from gateproxy.logs import log
from gateproxy.monitor.loop import RECHECK_AFTER_S

STATS_EVERY_S: Final = 1.0
RECHECK_EVERY_S: Final = 0.5  # a worker asks for a recheck at most this often
# Headers of the supervisor's admin answers that the worker's own writer sets anew.
_NOT_RELAYED: Final = frozenset({"content-length", "transfer-encoding", "connection", "date",
                                 "server"})
Message = dict[str, Any]


def encode(message: Message) -> bytes:
    return orjson.dumps(message) + b"\n"


async def read(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None when the other side has gone."""
    try:
        line = await reader.readline()
    except (ConnectionError, ValueError):  # ValueError: a line past the stream's limit
        return None
    if not line:
        return None
    message = orjson.loads(line)
    return message if isinstance(message, dict) else None


class Follower:
    """A worker's Watch: the status mirrors the supervisor's Monitor, and a recheck is
    asked of the supervisor."""

    def __init__(self, status: DependencyStatus, link: WorkerLink) -> None:
        self.status = status
        self._link = link
        # Set and replaced when the state or maintenance changes: wakes all its waiters.
        self._changed = asyncio.Event()
        self._asked = 0.0

    def start(self) -> None:
        """Nothing to start: the supervisor probes."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def reconfigure(self, dep: Dependency) -> None:
        self.status.reconfigure(dep)

    def update(self, exported: dict[str, Any]) -> bool:
        """Mirror the supervisor's status; True when its state or maintenance changed."""
        status = self.status
        before = (status.state, status.maintenance)
        status.mirror(exported)
        if (status.state, status.maintenance) == before:
            return False
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def wait_change(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()

    async def hold(self, timeout_s: float, limit: int) -> bool:
        """As Monitor.hold, the probes (about one a second while requests are held)
        asked of the supervisor."""
        status = self.status
        if status.held >= limit:
            return False
        status.held += 1
        changed = self._changed
        deadline = time.monotonic() + timeout_s
        try:
            while not changed.is_set() and (left := deadline - time.monotonic()) > 0:
                self.request_recheck(HELD)
                await self.wait_change(min(left, RECHECK_AFTER_S))
        finally:
            status.held -= 1
        return True

    def request_recheck(self, trigger: str = GATED) -> None:
        # The supervisor's monitor keeps to one probe in flight and one a second; this
        # only keeps a busy worker from sending a message per gated request.
        now = time.monotonic()
        if now - self._asked >= RECHECK_EVERY_S:
            self._asked = now
            self._link.send({"t": "recheck", "name": self.status.dep.name,
                             "trigger": trigger})


class WorkerLink:
    """A worker's end of the control channel."""

    def __init__(self, path: str, admin_path: str, index: int) -> None:
        self.index = index
        self._path = path
        self._admin_path = admin_path
        self._followers: dict[str, Follower] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._admin: aiohttp.ClientSession | None = None
        self.closed = asyncio.Event()  # the supervisor said stop, or went away

    def watch(self, _: object, status: DependencyStatus) -> Follower:
        """A worker's watch of `status`: it follows the supervisor's probes."""
        follower = self._followers[status.dep.name] = Follower(status, self)
        return follower

    def send(self, message: Message) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(encode(message))

    async def start(self, stats: Callable[[], Message],
                    on_reload: Callable[[], Awaitable[object]]) -> None:
        """Connect, say hello, then follow the supervisor until it says stop."""
        reader, self._writer = await asyncio.open_unix_connection(self._path,
                                                                   limit=1 << 24)
        self.send({"t": "hello", "index": self.index})
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen(reader, on_reload)),
                       loop.create_task(self._push_stats(stats))]

    async def _listen(self, reader: asyncio.StreamReader,
                      on_reload: Callable[[], Awaitable[object]]) -> None:
        while (message := await read(reader)) is not None:
            kind = message.get("t")
            if kind == "status":
                follower = self._followers.get(message["name"])
                # (None: a dependency this worker's configuration does not have yet.)
                if follower is not None and follower.update(message["state"]):
                    log.debug("status_followed", dependency=message["name"],
                              status=follower.status.state.value)
            elif kind == "reload":
                await on_reload()
                self.send({"t": "sync"})
            elif kind == "stop":
                break
        self.closed.set()

    async def _push_stats(self, stats: Callable[[], Message]) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            self.send({"t": "stats", **stats()})

    def admin_handlers(self, names: frozenset[str]) -> dict[str, EndpointHandler]:
        """The admin endpoints, answered by the supervisor over its admin socket."""

        async def relay(request: LocalRequest) -> Answer:
            if self._admin is None:
                self._admin = aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=self._admin_path),
                    timeout=aiohttp.ClientTimeout(total=10))
            async with self._admin.request(request.method, f"http://supervisor{request.path}",
                                           headers={"Accept": request.headers.get(
                                               "Accept", "*/*")}) as answer:
                body = await answer.read()
                # The supervisor's answer, written again by this worker's own writer.
                headers = [(k, v) for k, v in answer.headers.items()
                           if k.lower() not in _NOT_RELAYED]
                return Answer(answer.status, tuple(headers), body)

        return dict.fromkeys(names, relay)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writer is not None:
            self._writer.close()
        if self._admin is not None:
            await self._admin.close()
