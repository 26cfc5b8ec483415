"""Gates over the default configuration's docker-runner, in a chosen state, for tests of
the pure decisions (nothing is started: the watch is a real Monitor that never probes)."""

from __future__ import annotations

import dataclasses

from gateproxy import config
from gateproxy.core.dependency import DependencyStatus, ProbeError
from gateproxy.core.gate import Gate, Guard
from gateproxy.monitor.loop import Monitor
from gateproxy.monitor.probe import Prober

REFUSED = ProbeError("connection_refused", "refused")


def make_gate(state: str, admin_port: int | None = None, hold_ms: int = 0,
              allow_origins: frozenset[str] = frozenset()) -> Gate:
    """A gate whose docker-runner is `state` ("up", "down" or "unknown"), gating
    `/api/containers` and `POST /test/workspaces`."""
    cfg = config.load(None, {})
    cfg = dataclasses.replace(cfg, admin_port=admin_port,
                              cors=dataclasses.replace(cfg.cors, allow_origins=allow_origins))
    dep = dataclasses.replace(cfg.dependencies[0], hold_ms=hold_ms, gated_routes=(
        config.GatedRoute("/api/containers", None),
        config.GatedRoute("/test/workspaces", frozenset({"POST"}))))
    status = DependencyStatus(dep)
    if state == "up":
        status.record_success(1.0, 1)
    elif state == "down":
        status.record_failure(1.0, 1, REFUSED)
    guard = Guard(status, Monitor(status, Prober()), b'{"error":"not ready"}')
    return Gate.build([guard], cfg)
