"""The RPC oracle: a Connect service and its client from npm (tests/support/connect,
@connectrpc/connect-node), run with the machine's node. The client speaks the Connect
protocol or gRPC-Web over HTTP/1.1 and says what it got: the answers, or the error code
and message its own library read."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import orjson

from tests.support.node import node_binary, npm_ci

CONNECT_DIR = Path(__file__).parent / "connect"


class EchoServer:
    """`agyn.test.v1.Echo` (Ping, unary; Watch, server streaming) on 127.0.0.1:`port`."""

    def __init__(self, port: int) -> None:
        npm_ci(CONNECT_DIR)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.popen = subprocess.Popen([node_binary(), "rpc.js", "serve", str(port)],
                                      cwd=CONNECT_DIR, stdout=subprocess.PIPE, text=True)
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if line.strip() != "listening":
            self.stop()
            raise AssertionError(f"the Connect server did not start: {line!r}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


async def call(base_url: str, protocol: str, method: str, text: str) -> dict[str, Any]:
    """What the client says of one call: {"texts": [...]} or {"code", "message"}."""
    proc = await asyncio.create_subprocess_exec(
        node_binary(), "rpc.js", "call", base_url, protocol, method, text, cwd=CONNECT_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    if proc.returncode != 0:
        raise AssertionError(f"the Connect client failed: {err.decode()}")
    answer: dict[str, Any] = orjson.loads(out)
    return answer
