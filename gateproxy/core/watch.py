"""What the proxy asks of whatever keeps a dependency's status (a `Watch`), and why a
probe runs (its trigger)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gateproxy.core.model import Dependency

# What made a probe run (the `trigger` of `probe_failed`).
SCHEDULE, GATED, HELD, UPSTREAM_STATUS = ("schedule", "gated_request", "held_request",
                                          "upstream_status")

class Watch(Protocol):
    """What the proxy asks of whatever keeps a dependency's status: a Monitor, which
    probes, or in a worker process a Follower (gateproxy/workers/control.py), which mirrors the
    supervisor's Monitor."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def reconfigure(self, dep: Dependency) -> None: ...

    async def wait_change(self, timeout_s: float) -> None: ...

    async def hold(self, timeout_s: float, limit: int) -> bool: ...

    def request_recheck(self, trigger: str = GATED) -> None: ...


@runtime_checkable
class Maintainable(Protocol):
    """A watch an operator can put in maintenance: only one that probes (a Monitor),
    not a worker's follower of it."""

    def start_maintenance(self, reason: str | None, **caller: object) -> bool: ...

    def end_maintenance(self, **caller: object) -> bool: ...
