"""Real `gateproxy` processes started by a test: their stderr log lines, and waiting for
them to come up. The `procs` fixture (tests/conftest.py) kills what a test left running."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

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
