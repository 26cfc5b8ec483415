"""The optional access log (`log.access: true`): one line per request in the same JSON
lines as everything else.

aiohttp asks an access logger whether it is enabled once per connection and never calls
it when not, so a disabled access log costs requests nothing; a reload that switches it
applies to connections opened afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateproxy.logs import log

# Set on a request by whoever decides to gate or forward it; unmarked requests were
# answered by gateproxy itself (health, admin endpoints, a rejected path).
OUTCOME = web.RequestKey("gateproxy_outcome", str)
GATED = "gated"
FORWARDED = "forwarded"
LOCAL = "local"

_UNUSED = logging.getLogger("gateproxy.core.access")  # aiohttp insists on a logging.Logger


def runner_options(enabled: Callable[[], bool]) -> dict[str, Any]:
    """AppRunner keyword arguments for an access log switched on and off by `enabled`."""

    class AccessLog(AbstractAccessLogger):
        @property
        def enabled(self) -> bool:
            return enabled()

        def log(self, request: web.BaseRequest, response: web.StreamResponse,
                time: float) -> None:
            target = request.raw_path
            query = target.find("?")
            log.info(
                "access",
                method=request.method,
                # The query string is left out: it often carries tokens.
                path=target if query < 0 else target[:query],
                status=response.status,
                durationMs=round(time * 1000, 2),
                outcome=request.get(OUTCOME, LOCAL),
                bytes=response.body_length,
                remote=request.remote,
            )

    return {"access_log_class": AccessLog, "access_log": _UNUSED}
