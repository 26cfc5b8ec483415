"""Dependency configurations and probe results for the pure state-machine and /health
tests: the built-in docker-runner with any field changed, and a refused probe."""

from __future__ import annotations

import dataclasses

from gateproxy import config
from gateproxy.core.dependency import ProbeError

REFUSED = ProbeError("connection_refused", "refused")


def dep(**changes: object) -> config.Dependency:
    """The default docker-runner dependency with `changes` applied (retry fields too)."""
    base = config.load(None, {}).dependencies[0]
    retry_fields = dataclasses.asdict(base.retry)
    retry = dataclasses.replace(base.retry, **{  # type: ignore[arg-type]
        k: v for k, v in changes.items() if k in retry_fields})
    rest = {k: v for k, v in changes.items() if k not in retry_fields}
    return dataclasses.replace(base, retry=retry, **rest)  # type: ignore[arg-type]
