"""Helpers for the hostile-input tests: an upstream that records the exact bytes it
receives and checks them strictly, and a whole stack (recorder upstream + Gateway)
running on its own event loop in a thread, so that synchronous hypothesis tests can
talk to it over blocking sockets."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateproxy import config
from gateproxy.demo.standins import StandIn
from gateproxy.serve.gateway import Gateway
from tests.support.gateways import env_for
from tests.support.ports import free_port
from tests.support.standins import Recorder

T = TypeVar("T")

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]")
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Ambiguous(AssertionError):
    """The bytes an upstream received could be read as more than one thing."""


class Truncated(Exception):
    """The bytes end in the middle of a request (the requests before it are complete)."""

    def __init__(self, complete: list[WireRequest], message: str) -> None:
        super().__init__(message)
        self.complete = complete


@dataclass
class WireRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def parse_strict(data: bytes) -> list[WireRequest]:
    """Every request in `data`, read as strictly as RFC 9112 allows: CRLF line ends only,
    token header names, no control characters, one Host, never both Content-Length and
    Transfer-Encoding, Transfer-Encoding exactly `chunked`, strict chunk sizes, and not a
    byte left over. Anything else raises Ambiguous: two servers could disagree on it.
    Bytes that end in the middle of a request raise Truncated."""
    out: list[WireRequest] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if b"\n\n" in data[pos:] or b"\r\r" in data[pos:]:
                raise Ambiguous(f"a head not ended by CRLF CRLF: {data[pos:pos + 200]!r}")
            raise Truncated(out, f"an unterminated head: {data[pos:pos + 200]!r}")
        head = data[pos:end]
        if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
            raise Ambiguous(f"a bare CR or LF in a head: {head[:200]!r}")
        lines = head.split(b"\r\n")
        match = _REQUEST_LINE.fullmatch(lines[0])
        if match is None:
            raise Ambiguous(f"a malformed request line: {lines[0][:200]!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise Ambiguous(f"a malformed header line: {line[:200]!r}")
            if line[:1] in (b" ", b"\t"):
                raise Ambiguous(f"obs-fold: {line[:200]!r}")
            value = value.strip(b" \t")
            if not _FIELD_VALUE.fullmatch(value):
                raise Ambiguous(f"a control character in a header value: {line[:200]!r}")
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        request = WireRequest(match.group(1).decode(), match.group(2).decode("latin-1"),
                              headers, b"")
        if len(request.values("Host")) != 1:
            raise Ambiguous(f"Host {len(request.values('Host'))} times")
        lengths = request.values("Content-Length")
        codings = request.values("Transfer-Encoding")
        if lengths and codings:
            raise Ambiguous("both Content-Length and Transfer-Encoding")
        if len(lengths) > 1 or len(codings) > 1:
            raise Ambiguous("a framing header repeated")
        pos = end + 4
        if codings:
            if codings[0] != "chunked":
                raise Ambiguous(f"Transfer-Encoding {codings[0]!r}")
            body = b""
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    if re.fullmatch(rb"[0-9a-fA-F]{0,16}", data[pos:]):
                        raise Truncated(out, "an unterminated chunk size")
                    raise Ambiguous(f"a chunk size line {data[pos:pos + 100]!r}")
                size_text = data[pos:line_end]
                if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
                    raise Ambiguous(f"a chunk size line {size_text[:100]!r}")
                size = int(size_text, 16)
                pos = line_end + 2
                if pos + size + 2 > len(data):
                    raise Truncated(out, "a chunk cut short")
                if data[pos + size:pos + size + 2] != b"\r\n":
                    raise Ambiguous("chunk data not followed by CRLF")
                body += data[pos:pos + size]
                pos += size + 2
                if size == 0:
                    break
            request.body = body
        elif lengths:
            if not re.fullmatch(r"[0-9]{1,18}", lengths[0]):
                raise Ambiguous(f"Content-Length {lengths[0]!r}")
            size = int(lengths[0])
            if pos + size > len(data):
                raise Truncated(out, "a body shorter than its Content-Length")
            request.body = data[pos:pos + size]
            pos += size
        out.append(request)
    return out


class RawUpstream:
    """An upstream on loopback that records every byte it receives, connection by
    connection, and answers each request it can frame with `200 ok`."""

    def __init__(self) -> None:
        self.connections: list[bytearray] = []
        self.ended: set[int] = set()  # indexes of connections the proxy ended
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[WireRequest]:
        """Every complete request received, strictly parsed (raises Ambiguous otherwise).
        A request cut off is not received, provided the proxy then ended the connection:
        no server acts on a request it never got the end of."""
        out: list[WireRequest] = []
        for i, conn in enumerate(self.connections):
            try:
                out += parse_strict(bytes(conn))
            except Truncated as exc:
                if i not in self.ended:
                    raise Ambiguous(f"a request left unfinished on an open connection: {exc}"
                                    ) from exc
                out += exc.complete
        return out

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        seen = bytearray()
        index = len(self.connections)
        self.connections.append(seen)
        answered = 0
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                seen += chunk
                try:
                    complete = len(parse_strict(bytes(seen)))
                except Truncated as exc:
                    complete = len(exc.complete)
                except Ambiguous:
                    continue  # the test reads it again and fails
                for _ in range(complete - answered):
                    writer.write(OK_RESPONSE)
                answered = complete
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.ended.add(index)
            writer.close()


@dataclass
class Stack:
    """A recorder upstream and a Gateway on a private event loop in a daemon thread."""

    runner_url: str = ""
    yaml: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    recorder: Recorder | None = None
    gateway: Gateway | None = None
    _upstream: StandIn | None = None
    _thread: threading.Thread | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, tmp_dir: str) -> Stack:
        path = None
        if self.yaml:
            path = f"{tmp_dir}/stack.yaml"
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.yaml)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.run(self._start(path))
        return self

    async def _start(self, path: str | None) -> None:
        self.recorder = Recorder()
        self._upstream = StandIn(self.recorder.app)
        await self._upstream.start()
        env = env_for(self._upstream, self.runner_url or f"http://127.0.0.1:{free_port()}",
                      **self.extra_env)
        self.gateway = Gateway(config.load(path, env))
        await self.gateway.start()

    @property
    def port(self) -> int:
        assert self.gateway is not None
        return self.gateway.port

    @property
    def seen(self) -> list[tuple[str, str]]:
        assert self.recorder is not None
        return list(self.recorder.seen)

    def stop(self) -> None:
        async def _stop() -> None:
            if self.gateway is not None:
                await self.gateway.stop()
            if self._upstream is not None:
                await self._upstream.stop()

        try:
            self.run(_stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self.loop.close()
