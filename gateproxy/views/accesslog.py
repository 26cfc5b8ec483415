"""The admin port's access log (`log.access: true`), as aiohttp's access logger: the same
line as the proxy port's (gateproxy/logs.py `access`).

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

from gateproxy import logs

_UNUSED = logging.getLogger("gateproxy.core.access")  # aiohttp insists on a logging.Logger


def runner_options(enabled: Callable[[], bool]) -> dict[str, Any]:
    """AppRunner keyword arguments for an access log switched on and off by `enabled`."""

    class AccessLog(AbstractAccessLogger):
        @property
        def enabled(self) -> bool:
            return enabled()

        def log(self, request: web.BaseRequest, response: web.StreamResponse,
                time: float) -> None:
            logs.access(request.method, request.raw_path, response.status, time, logs.LOCAL,
                        response.body_length, request.remote)

    return {"access_log_class": AccessLog, "access_log": _UNUSED}
