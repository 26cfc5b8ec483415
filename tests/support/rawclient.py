"""The tests' one raw HTTP/1.1 client: it sends a request exactly as written (no client
library normalises the target or the headers under test) and keeps the response as it
came (status line, header lines in order and case, interim 1xx responses, the framing),
so that nothing is normalised before a comparison."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# A raw TCP server's per-connection handler (the `raw_server` fixture, tests/conftest.py).
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Exchange:
    status_line: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "length", "chunked", "close" or "none"
    interim: list[str] = field(default_factory=list)  # 1xx status lines

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ", 2)[1])

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def _head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return lines[0], headers


async def read_exchange(reader: asyncio.StreamReader, method: str) -> Exchange:
    interim = []
    while True:
        status_line, headers = await _head(reader)
        status = int(status_line.split(" ", 2)[1])
        if 100 <= status < 200 and status != 101:
            interim.append(status_line)
            continue
        break
    names = {k.lower(): v for k, v in headers}
    if method == "HEAD" or status in (101, 204, 304):
        return Exchange(status_line, headers, b"", "none", interim)
    if "chunked" in names.get("transfer-encoding", "").lower():
        chunks = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields
                break
            chunks += await reader.readexactly(size)
            await reader.readexactly(2)
        return Exchange(status_line, headers, bytes(chunks), "chunked", interim)
    if "content-length" in names:
        body = await reader.readexactly(int(names["content-length"]))
        return Exchange(status_line, headers, body, "length", interim)
    return Exchange(status_line, headers, await reader.read(), "close", interim)


async def exchange(port: int, request: bytes, method: str | None = None,
                   body_parts: list[bytes] | None = None, timeout: float = 10.0) -> Exchange:
    """One request on a new connection: `request` (head and any body) as is, then the
    `body_parts` one write at a time."""
    method = method or request.split(b" ", 1)[0].decode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    try:
        async with asyncio.timeout(timeout):
            writer.write(request)
            for part in body_parts or ():
                await writer.drain()
                writer.write(part)
            await writer.drain()
            return await read_exchange(reader, method)
    finally:
        writer.close()


def build(target: str, method: str = "GET", extra: str = "") -> bytes:
    """A request head for `target` with `Host: platform.test` and `Connection: close`."""
    return (f"{method} {target} HTTP/1.1\r\nHost: platform.test\r\n{extra}"
            "Connection: close\r\n\r\n").encode("latin-1")


def blocking_exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int | None, bytes]:
    """Send `data` on a new connection, read until the server closes (or `timeout`); the
    status code of the first response (None if there was none) and all bytes read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # No half-close after sending: asyncio closes a transport on EOF, which would cut
        # the answer off; requests say `Connection: close` instead. The server may close
        # before it has read everything: that is an answer too.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        got = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (TimeoutError, OSError):
            pass
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", got)
    return (int(match.group(1)) if match else None), got
