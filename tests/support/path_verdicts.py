"""The gate's verdict on a request target, from the pure path functions alone (no
server): the readings it judges a target by, and whether the default rules gate it."""

from __future__ import annotations

from gateproxy.core import paths
from gateproxy.core.paths import RouteTable, Rule

# The built-in docker-runner's gated routes, plus a rule restricted to one method.
TABLE: RouteTable[str] = RouteTable([
    Rule("/api/containers", None, "runner"),
    Rule("/test/workspaces", frozenset({"POST"}), "runner"),
])


def judged(target: str) -> tuple[str, ...]:
    """The readings the gate judges `target` by (BadPath for a bad one)."""
    return paths.readings(paths.normalise(paths.split_target(target)[0]))


def gated(target: str, method: str = "GET") -> bool:
    return any(TABLE.match(method, r) for r in judged(target))
