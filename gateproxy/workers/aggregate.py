"""One view of several worker processes' counts (`workers: N`). Pure.

Each worker serves requests and counts them; only the supervisor probes. Every second a
worker sends its metrics as numbers (gateproxy/views/counts.py `Family`), and the
supervisor makes one of them here, family by family, as each family says (`merge`):

- `SUM` (what serving the proxy's port counts: requests, latencies, open WebSockets,
  held requests, and whatever else a worker counts): the workers' values added up,
  series by series: counters and each histogram bucket and sum, and gauges too, so that
  a gauge reads for the whole pod (sessions open in all); its `_created` time is the
  earliest;
- `LOWEST` (a gauge of a state each worker finds on its own: whether the upstream is
  up): the lowest of the workers' values, series by series;
- `SUPERVISOR` (what the supervisor alone does: probing, the dependencies' state, which
  every process mirrors, reloads, the admin port, readiness): the supervisor's alone.

The supervisor writes the result as its exposition, its own `process_*` metrics first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from gateproxy.views.counts import HISTOGRAM, LOWEST, SUPERVISOR, Family, Series


def _add(kind: str, into: Any, value: Any) -> Any:
    if kind == HISTOGRAM:
        (counts, total), (more, more_total) = into, value
        return [a + b for a, b in zip(counts, more, strict=True)], total + more_total
    return into + value


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _combined(families: Sequence[Family], combine: Callable[[Any, Any], Any]
              ) -> list[Series]:
    """The series of several processes' snapshots of one family, series by series, each
    value `combine`d with the one before."""
    sums: dict[tuple[str, ...], Series] = {}
    for family in families:
        for values, value, created in family["series"]:
            key = tuple(values)
            seen = sums.get(key)
            sums[key] = (values, value, created) if seen is None else (
                values, combine(seen[1], value), _earliest(seen[2], created))
    return list(sums.values())


def merge(supervisor: Sequence[Family], workers: Iterable[Sequence[Family]]) -> list[Family]:
    """The supervisor's families, in its order, each one not the supervisor's own
    replaced by the workers' combined (a family only the workers have comes after)."""
    by_name: dict[str, list[Family]] = {}
    for snapshot in workers:
        for family in snapshot:
            by_name.setdefault(family["name"], []).append(family)
    merged = []
    known = {family["name"] for family in supervisor}
    for family in [*supervisor, *(f[0] for n, f in by_name.items() if n not in known)]:
        if family["merge"] != SUPERVISOR:
            family = family.copy()
            combine = min if family["merge"] == LOWEST else partial(_add, family["type"])
            family["series"] = _combined(by_name.get(family["name"], []), combine)
        merged.append(family)
    return merged


def sum_recent(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The status page's recent counts (`Metrics.recent`, plus `held` and the upstream's
    row) of every worker, added up."""
    forwarded = {"last5m": 0, "last60m": 0}
    gated: dict[str, dict[str, int]] = {}
    held: dict[str, int] = {}
    upstream: list[Mapping[str, Any]] = []
    for report in reports:
        for window, count in report["forwarded"].items():
            forwarded[window] += count
        for name, counts in report["gated"].items():
            into = gated.setdefault(name, {"last5m": 0, "last60m": 0})
            for window, count in counts.items():
                into[window] += count
        for name, count in report["held"].items():
            held[name] = held.get(name, 0) + count
        upstream.append(report["upstream"])
    return {"forwarded": forwarded, "gated": gated, "held": held,
            "upstream": merge_upstream(upstream)}


def merge_upstream(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The platform-server's row of several workers (`UpstreamState.snapshot` and
    `waiting` each): down while any worker finds it down, since the latest change to
    that state, the latest error, the restarts the most watchful worker saw (each worker
    sees the same restarts), and every worker's waiting requests."""
    if not rows:
        return {"status": "up", "since": None, "lastError": None, "restartsLastHour": 0,
                "waiting": 0}
    status = "down" if any(r["status"] == "down" for r in rows) else "up"
    latest = max((r for r in rows if r["status"] == status), key=lambda r: r["since"])
    errors = [r for r in rows if r["lastError"] is not None]
    return {"status": status, "since": latest["since"],
            "lastError": max(errors, key=lambda r: r["since"])["lastError"] if errors else None,
            "restartsLastHour": max(r["restartsLastHour"] for r in rows),
            "waiting": sum(r["waiting"] for r in rows)}
