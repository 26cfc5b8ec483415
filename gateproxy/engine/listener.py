"""`Listener`: the proxy port's listening sockets, the cap on open connections, and the
drain at shutdown.

At `limits.max_connections` open connections the listener stops accepting, so that
further clients wait in the kernel's backlog (as with HAProxy's `maxconn`) instead of
costing memory here; it accepts again as soon as one closes. Pausing closes the
accepting servers but not the sockets (they are duplicates), so the kernel keeps
completing handshakes into the backlog. Connections accepted in the same burst as the
one that reached the cap (asyncio accepts in batches) wait, unread, in a queue of at most
`backlog` entries, and are served first; past that queue a connection gets a 503.

Limit events (slow heads, stalled bodies, refusals, malformed requests) are counted and
logged at most every few seconds, so that a flood of bad clients never becomes a flood
of log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter, deque
from typing import Final

from gateproxy.engine.connection import Carrier, Connection, Limits
from gateproxy.logs import log

LOG_EVERY_S: Final = 10.0
RETRY_ACCEPT_S: Final = 1.0
BACKLOG: Final = 1024


class Listener:
    """Serves connections on host:port for a `Carrier`; see the module's docstring."""

    def __init__(self, carrier: Carrier, limits: Limits, max_connections: int,
                 refusal: bytes) -> None:
        self.carrier = carrier
        self.limits = limits
        self.max_connections = max_connections
        self.backlog = BACKLOG  # connections accepted past the cap that may wait
        self.draining = False
        self._refusal = refusal
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self._emptied = asyncio.Event()  # the last connection has closed
        self.waiting: deque[Connection] = deque()
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._resuming: asyncio.Task[None] | None = None
        self._update_pending = False
        self._closed = False
        self.name = ""
        self.totals: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._flush: asyncio.TimerHandle | None = None
        self._last_log = -LOG_EVERY_S

    # --- listening -----------------------------------------------------------------------

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen; the port bound. Raises OSError when it cannot be had."""
        first = await self.loop.create_server(lambda: Connection(self), host, port,
                                               backlog=BACKLOG, reuse_port=reuse_port or None)
        self._sockets = [socket.socket(fileno=os.dup(s.fileno())) for s in first.sockets]
        self._servers = [first]
        bound = int(self._sockets[0].getsockname()[1])
        self.name = f"http://{host}:{bound}"
        return bound

    @property
    def paused(self) -> bool:
        return not self._servers

    def _pause(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()

    async def _resume(self) -> None:
        servers: list[asyncio.AbstractServer] = []
        try:
            for sock in self._sockets:
                servers.append(await self.loop.create_server(
                    lambda: Connection(self), sock=sock.dup(), backlog=BACKLOG))
        except OSError as exc:
            # Out of descriptors, most likely: try again shortly, never stay deaf.
            log.error("accept_resume_failed", listener=self.name, message=str(exc))
            for server in servers:
                server.close()
            self._resuming = None
            self.loop.call_later(RETRY_ACCEPT_S, self._schedule_update)
            return
        self._resuming = None
        if self._closed:
            for server in servers:
                server.close()
            return
        self._servers = servers
        self._schedule_update()  # it may have filled up again meanwhile

    # --- the connection count (a Site's) ---------------------------------------------------

    def admit(self, conn: Connection) -> bool:
        if len(self.connections) < self.max_connections and not self.waiting:
            self.connections.add(conn)
            if len(self.connections) >= self.max_connections:
                self._schedule_update()
            return True
        if len(self.waiting) < self.backlog:
            # Accepted in the same burst as the connection that reached the cap: it
            # waits here, unread, as the others wait in the kernel's backlog.
            self.waiting.append(conn)
            self._schedule_update()
        else:
            self.tally("refused")
            conn.linger(self._refusal)
        return False

    def closed(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            while self.waiting and len(self.connections) < self.max_connections:
                waiting = self.waiting.popleft()
                if not waiting.lost:
                    self.connections.add(waiting)
                    waiting.admitted()
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(conn)
        if not self.connections:
            self._emptied.set()
        if self.paused:
            self._schedule_update()

    def _schedule_update(self) -> None:
        # Deferred a loop turn: asyncio may be creating transports for connections it
        # accepted in the same burst, and they must find their server still open.
        if not self._update_pending:
            self._update_pending = True
            self.loop.call_soon(self._update)

    def _update(self) -> None:
        self._update_pending = False
        if self._closed or self.draining:
            return
        if len(self.connections) >= self.max_connections or self.waiting:
            if not self.paused:
                self._pause()
                self.tally("limitReached")
        elif self.paused and self._resuming is None:
            self._resuming = self.loop.create_task(self._resume())

    # --- limit events --------------------------------------------------------------------

    def tally(self, kind: str) -> None:
        self._pending[kind] += 1
        self.totals[kind] += 1
        if self._flush is None:
            delay = max(0.0, self._last_log + LOG_EVERY_S - self.loop.time())
            self._flush = self.loop.call_later(delay, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self._pending:
            return
        self._last_log = self.loop.time()
        counts = dict(self._pending)
        self._pending.clear()
        # Closing connections that never sent a byte is routine; the rest is worth a look.
        level = "DEBUG" if set(counts) == {"idleClosed"} else "WARNING"
        log.log(level, "client_limits", listener=self.name, **counts,
                openConnections=len(self.connections), maxConnections=self.max_connections,
                accepting=not self.paused)

    # --- the end -------------------------------------------------------------------------

    async def close(self, grace_s: float) -> None:
        """Stop accepting, end idle connections, give the busy ones `grace_s` to finish
        their answers (each closes after its answer), then cut what is left."""
        self.draining = True
        self._closed = True
        if self._resuming is not None:
            self._resuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resuming
        self._pause()
        for sock in self._sockets:
            sock.close()
        while self.waiting:
            self.waiting.popleft().abort()
        for conn in list(self.connections):
            if not conn.busy and conn.tunnel is None:
                conn.finish()
        if self.connections:
            self._emptied.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._emptied.wait()
        for conn in list(self.connections):
            conn.abort()
        self.flush()
