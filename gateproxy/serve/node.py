"""What every gateproxy process keeps, whatever it serves: the guards of its
dependencies and the live runtime, metrics, the reload target, and the start and stop
of whatever watches the dependencies.

A proxy (gateproxy/serve/gateway.py) and a supervisor of several workers
(gateproxy/workers/supervisor.py) are each a `Node` with their own listeners. How a
dependency is watched is given to the node (`WatchFactory`): a `Monitor` that probes,
or in a worker a follower of the supervisor's probes; nothing else differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateproxy.config.version import version_of
from gateproxy.core import answers
from gateproxy.core.dependency import DependencyStatus
from gateproxy.core.gate import Gate, Guard
from gateproxy.core.model import Config, Dependency
from gateproxy.core.runtime import Runtime
from gateproxy.core.watch import Watch
from gateproxy.monitor.loop import Monitor, first_required_down
from gateproxy.monitor.probe import Prober
from gateproxy.upstream.reconnect import Reconnector
from gateproxy.views.counts import Family
from gateproxy.views.health import readiness
from gateproxy.views.metrics import Metrics

WatchFactory = Callable[["Node", DependencyStatus], Watch]


def probing(node: Node, status: DependencyStatus) -> Watch:
    """The watch of a process that probes its dependencies itself."""
    return Monitor(status, node.prober, on_result=node.metrics.observe_probe)


class Node:
    """The runtime, guards and metrics of one process; see the module's docstring."""

    def __init__(self, config: Config, watch: WatchFactory = probing,
                 open_websockets: Callable[[], int] = lambda: 0) -> None:
        self._watch = watch
        # The upstream as this process's connections find it (a supervisor's never
        # connects: its workers' are summed).
        upstream = config.upstream
        self.reconnector = Reconnector(upstream.url, upstream.connect_timeout_ms,
                                       upstream.retry_connect_ms, upstream.retry_max_requests)
        self.metrics = Metrics(
            self.statuses, open_websockets, lambda: self.reconnector.state.up,
            self.reconnector.outcomes,
            lambda: readiness(self.draining, self.serving, self.statuses())[0] == 200)
        self.prober = Prober()
        guards = [self.make_guard(dep) for dep in config.dependencies]
        self.runtime = Runtime(config, Gate.build(guards, config), version_of(config, 1))
        self.draining = False
        self.serving = False  # whether the proxy's port is served (the owner says)
        self.started_at = time.time()
        # What else a reload does (the supervisor tells its workers).
        self.on_reload: list[Callable[[], None]] = []

    # --- what a Reloadable needs ------------------------------------------------------

    def make_guard(self, dep: Dependency) -> Guard:
        status = DependencyStatus(dep)
        return Guard(status, self._watch(self, status),
                     answers.error_body(dep.not_ready.code, dep.not_ready.message))

    def count_reload(self, applied: bool) -> None:
        self.metrics.count_reload(applied)
        if applied:
            for hook in self.on_reload:
                hook()

    # --- the live state, read-only (a reload replaces `runtime` as a whole) ------------

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def gate(self) -> Gate:
        return self.runtime.gate

    @property
    def guards(self) -> tuple[Guard, ...]:
        return self.runtime.gate.guards

    def statuses(self) -> list[DependencyStatus]:
        return [g.status for g in self.runtime.guards]

    def families(self) -> list[Family]:
        """This process's metrics as numbers."""
        return self.metrics.snapshot()

    def stats(self) -> dict[str, Any]:
        """What a worker reports to its supervisor every second: numbers, which the
        supervisor adds up and writes as its exposition."""
        return {"metrics": self.families(), "recent": self.recent()}

    def recent(self) -> dict[str, Any]:
        """Request counts of the last 5 and 60 minutes, the held requests, and the
        upstream's row (its state and the requests waiting for it)."""
        reconnector = self.reconnector
        return {**self.metrics.recent(),
                "held": {s.dep.name: s.held for s in self.statuses()},
                "upstream": {**reconnector.state.snapshot(time.time()),
                             "waiting": reconnector.waiting}}

    # --- start and stop -------------------------------------------------------------------

    async def required_down(self) -> str | None:
        """The fail-fast start: what is wrong with the first required dependency that is
        not up, or None."""
        return await first_required_down(g.monitor for g in self.guards)

    def start_watching(self) -> None:
        for guard in self.guards:
            guard.monitor.start()

    async def stop_watching(self) -> None:
        for guard in self.guards:
            await guard.monitor.stop()
        await self.prober.close()
