"""A minimal HTTP/1.1 client over a raw socket: sends bytes exactly as written, so that
no client library normalises the path or the headers under test."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    status: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> RawResponse:
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.setdefault(name.strip().lower(), []).append(value.strip())
        resp = RawResponse(status, headers)
        if "content-length" in headers:
            resp.body = await reader.readexactly(int(headers["content-length"][0]))
        elif headers.get("transfer-encoding", [""])[0].lower() == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                body += chunk[:-2]
                if size == 0:
                    break
            resp.body = body
        return resp


async def request(port: int, data: bytes, timeout: float = 5.0) -> RawResponse:
    """Send `data` as is on a new connection and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, timeout)
    finally:
        writer.close()


def get(target: str, method: str = "GET", extra: str = "") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: platform.test\r\n{extra}"
            "Connection: close\r\n\r\n").encode("latin-1")
