"""An upstream that keeps every byte it receives: per connection, in order, as it came.

It is the oracle of what a proxy sent upstream, so it interprets as little as it can: it
frames requests only far enough to answer each one (`ANSWER`, so that the proxy keeps
going), by the head up to the blank line and then a body by Content-Length or chunked
framing (trailer section included). What it cannot frame stays in the connection's bytes,
unanswered: a test sees it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_READ = 65536


class Unframeable(ValueError):
    """Bytes that are no HTTP/1.1 request this recorder can frame."""


@dataclass(frozen=True)
class Request:
    """One request as it came: its head and its body bytes, framing included."""

    head: bytes  # request line and header lines, through the blank line
    body: bytes  # as on the wire (chunk sizes and trailer section included)
    content: bytes  # the body without its framing
    trailer: bytes  # a chunked body's trailer section (without the final CRLF)

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        """The header fields: names lowercased, values without surrounding whitespace."""
        out = []
        for raw in self.head.split(b"\r\n")[1:]:
            if raw:
                name, _, value = raw.partition(b":")
                out.append((name.strip().lower(), value.strip()))
        return out

    @property
    def raw(self) -> bytes:
        return self.head + self.body


def frame(data: bytes | bytearray, start: int = 0) -> Request | None:
    """The request at `start` of `data`, or None while it is incomplete."""
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        return None
    head = bytes(data[start:end + 4])
    if not head[:1].isalpha():
        raise Unframeable(head[:40])
    fields = Request(head, b"", b"", b"").fields
    codings = [v for n, v in fields if n == b"transfer-encoding"]
    lengths = [v for n, v in fields if n == b"content-length"]
    at = end + 4
    if codings:
        return _chunked(data, head, at)
    if lengths:
        if len(set(lengths)) != 1 or not lengths[0].isdigit():
            raise Unframeable(b"Content-Length " + b", ".join(lengths))
        size = int(lengths[0])
        if len(data) - at < size:
            return None
        body = bytes(data[at:at + size])
        return Request(head, body, body, b"")
    return Request(head, b"", b"", b"")


def _chunked(data: bytes | bytearray, head: bytes, at: int) -> Request | None:
    start, content = at, bytearray()
    while True:
        eol = data.find(b"\r\n", at)
        if eol < 0:
            return None
        size_text = data[at:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise Unframeable(b"chunk size " + size_text[:40]) from None
        at = eol + 2
        if size == 0:
            break
        if len(data) < at + size + 2:
            return None
        if data[at + size:at + size + 2] != b"\r\n":
            raise Unframeable(b"chunk without CRLF")
        content += data[at:at + size]
        at += size + 2
    # The trailer section: field lines, then an empty line.
    if data[at:at + 2] == b"\r\n":
        return Request(head, bytes(data[start:at + 2]), bytes(content), b"")
    end = data.find(b"\r\n\r\n", at)
    if end < 0:
        return None
    return Request(head, bytes(data[start:end + 4]), bytes(content), bytes(data[at:end]))


@dataclass
class Connection:
    """One connection the recorder accepted."""

    number: int
    data: bytearray = field(default_factory=bytearray)
    requests: list[Request] = field(default_factory=list)
    framed: int = 0  # bytes of `data` that are complete requests
    problem: str | None = None  # why framing stopped, if it did
    closed: bool = False  # the peer closed (or reset) it


@dataclass(frozen=True)
class Seen:
    """What one connection received between a mark and now."""

    number: int
    new: bool  # accepted after the mark
    data: bytes
    requests: tuple[Request, ...]
    rest: bytes  # received but not (yet) a complete request
    problem: str | None
    closed: bool


Mark = dict[int, tuple[int, int]]  # connection number: (bytes, requests) at the mark


class ByteRecorder:
    """The TCP server on 127.0.0.1 (an ephemeral port); `start`, then `url`."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.last_byte = time.monotonic()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = Connection(len(self.connections))
        self.connections.append(conn)
        try:
            while True:
                try:
                    chunk = await reader.read(_READ)
                except ConnectionError:
                    chunk = b""
                if not chunk:
                    break
                conn.data += chunk
                self.last_byte = time.monotonic()
                answers = self._frame(conn)
                if answers:
                    writer.write(ANSWER * answers)
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
        finally:
            conn.closed = True
            self._handlers.discard(task)
            writer.close()

    @staticmethod
    def _frame(conn: Connection) -> int:
        """Frame what has become complete; the number of new requests."""
        count = 0
        while conn.problem is None:
            try:
                request = frame(conn.data, conn.framed)
            except Unframeable as exc:
                conn.problem = f"unframeable at byte {conn.framed}: {exc.args[0]!r}"
                break
            if request is None:
                break
            conn.requests.append(request)
            conn.framed += len(request.raw)
            count += 1
        return count

    # --- reading what came, for one case ------------------------------------------------

    def mark(self) -> Mark:
        return {c.number: (len(c.data), len(c.requests)) for c in self.connections}

    def since(self, mark: Mark) -> list[Seen]:
        """Per connection that received bytes after `mark`: what it received."""
        out = []
        for conn in self.connections:
            size, count = mark.get(conn.number, (0, 0))
            if len(conn.data) == size and conn.number in mark:
                continue
            out.append(Seen(conn.number, conn.number not in mark, bytes(conn.data[size:]),
                            tuple(conn.requests[count:]), bytes(conn.data[conn.framed:]),
                            conn.problem, conn.closed))
        return out

    async def settle(self, quiet: float = 0.05, limit: float = 5.0) -> None:
        """Wait until no byte has come for `quiet` seconds (at most `limit` seconds)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            idle = time.monotonic() - self.last_byte
            if idle >= quiet:
                return
            await asyncio.sleep(quiet - idle)
