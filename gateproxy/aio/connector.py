"""aiohttp's TCPConnector for AiohttpUpstream, its new connections made through the
connect step (gateproxy/upstream/reconnect.py), as FastUpstream's are.

It overrides only the documented `connect` (a connection from the pool, or a new one),
which ClientSession awaits before it writes any of the request, so a refusal met here has
sent nothing and the request body is still unread. It is in the fence because it
subclasses an aiohttp class, which only the fence does.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.connector import Connection

from gateproxy.http_rules.actions import ConnectStep


class StepConnector(aiohttp.TCPConnector):
    """A TCPConnector whose `connect` goes through `connect_step`."""

    def __init__(self, connect_step: ConnectStep, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._connect_step = connect_step

    async def connect(self, req: aiohttp.ClientRequest, *args: Any,
                      **kwargs: Any) -> Connection:
        parent = super().connect
        return await self._connect_step.connect(lambda: parent(req, *args, **kwargs))
