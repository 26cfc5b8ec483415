"""Real `gateproxy` processes started by a test: their stderr log lines, and waiting for
them to come up. The `procs` fixture (tests/conftest.py) kills what a test left running."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


class Proc:
    """A gateproxy subprocess whose stderr is collected line by line. `env` is added to
    this process's own environment."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gateproxy", *args], stderr=subprocess.PIPE,
            stdout=subprocess.PIPE, env={**os.environ, **(env or {})})

    def lines(self) -> list[dict[str, object]]:
        assert self.popen.stderr is not None
        out = self.popen.stderr.read().decode()
        return [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


async def wait_live(port: int, timeout: float = 10.0) -> None:
    """Until /_gateproxy/live on `port` answers 200."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/_gateproxy/live") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("gateproxy did not come up")
            await asyncio.sleep(0.05)


@dataclass
class LoggedProcess:
    """A gateproxy started with asyncio, its stderr's JSON log lines read as they come
    (start `read` as a task)."""

    process: asyncio.subprocess.Process
    port: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            if line.startswith(b"{"):
                self.lines.append(orjson.loads(line))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == event]

    async def wait_for(self, event: str, count: int = 1, timeout: float = 15.0,
                       **fields: Any) -> list[dict[str, Any]]:
        """The first `count` lines of `event` with `fields`, once there are that many."""
        deadline = time.monotonic() + timeout
        while True:
            found = [ln for ln in self.events(event)
                     if all(ln.get(k) == v for k, v in fields.items())]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.process.returncode is not None:
                raise AssertionError(f"no {count} {event} {fields} lines: {self.lines[-20:]}")
            await asyncio.sleep(0.02)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"
