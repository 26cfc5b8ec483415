"""The yardstick of bench/run.py: about the fastest plain reverse proxy Python reaches on
public parsers, a ceiling to hold gateproxy against.

`asyncio.Protocol` on both sides (uvloop when installed), httptools parsing requests and
answers, keep-alive pooled upstream connections, answers relayed as they arrive
(Content-Length ones as they are, chunked and close-delimited ones chunked), with the
upstream's reading paused while the client's socket is full. No header rules beyond the
hop-by-hop ones, no gate, no metrics, no limits, no timeouts; request bodies are buffered
whole, upgrades are refused. One prefix may answer a fixed JSON 503: always, or while a
flag file exists (looked at every 100 ms, so the state is in memory, like HAProxy's
health check's).

    python bench/yardstick.py --port 8080 --upstream 127.0.0.1:8000 \\
        [--gate-prefix /api/containers [--gate-file PATH] [--gate-body JSON]]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

import httptools

HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                 b"transfer-encoding", b"upgrade"})
# A request's body is buffered whole and sent with a Content-Length of its own.
REQUEST_DROP = HOP | {b"content-length", b"expect"}
REASON = {int(s): s.phrase.encode() for s in HTTPStatus}
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BODY = '{"error":{"code":"docker_runner_not_ready","message":"docker-runner not ready"}}'


class Gate:
    """The one gated prefix, and whether it answers 503 now."""

    def __init__(self, prefix: str | None, flag: str | None, body: str) -> None:
        self.prefix = prefix.rstrip("/").encode() if prefix else None
        self.flag = flag
        self.closed = prefix is not None and flag is None
        head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Cache-Control: no-store\r\nRetry-After: 1\r\nContent-Length: {len(body)}\r\n")
        self.answer = {True: f"{head}\r\n{body}".encode(),
                       False: f"{head}Connection: close\r\n\r\n{body}".encode()}

    def blocks(self, url: bytes) -> bool:
        if not self.closed or self.prefix is None:
            return False
        path = url.split(b"?", 1)[0]
        return path == self.prefix or path.startswith(self.prefix + b"/")

    def watch(self) -> None:
        if self.flag is not None:
            self.closed = os.path.exists(self.flag)
            asyncio.get_running_loop().call_later(0.1, self.watch)


class Pool:
    """Idle keep-alive connections to the one upstream, the most recent first."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Upstream] = []

    def send(self, client: Client, data: bytes, head_only: bool) -> None:
        while self.idle:
            up = self.idle.pop()
            if up.transport is not None and not up.transport.is_closing():
                up.send(client, data, head_only)
                return
        asyncio.get_running_loop().create_task(self.connect(client, data, head_only))

    async def connect(self, client: Client, data: bytes, head_only: bool) -> None:
        try:
            _, up = await asyncio.get_running_loop().create_connection(
                lambda: Upstream(self), self.host, self.port)
        except OSError:
            client.finish(BAD_GATEWAY, keep=False)
            return
        if client.transport is None:  # gone meanwhile
            self.idle.append(up)
        else:
            up.send(client, data, head_only)


class Upstream(asyncio.Protocol):
    """One upstream connection: the answer to one request at a time, relayed to its client."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.head_only = self.started = self.done = self.reuse = False
        self.chunked = self.eof_framed = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, client: Client, data: bytes, head_only: bool) -> None:
        self.client, client.upstream = client, self
        self.head_only, self.started, self.done, self.headers = head_only, False, False, []
        assert self.transport is not None
        self.transport.write(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        out = [b"HTTP/1.1 %d %s\r\n" % (status, REASON.get(status, b"Unknown"))]
        length = chunked = False
        for name, value in self.headers:
            lower = name.lower()
            length |= lower == b"content-length"
            chunked |= lower == b"transfer-encoding"
            if lower not in HOP:
                out.append(b"%s: %s\r\n" % (name, value))
        bodiless = self.head_only or status < 200 or status in (204, 304)
        self.chunked = not length and not bodiless
        self.eof_framed = self.chunked and not chunked
        if self.chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        if self.client is not None and not self.client.keep_alive:
            out.append(b"Connection: close\r\n")
        self.out.append(b"".join(out) + b"\r\n")
        self.started = True
        if self.head_only:  # the parser would wait for a body that HEAD does not get:
            self.done = True  # stop it here, and do not reuse the connection
            raise StopIteration

    def on_body(self, body: bytes) -> None:
        self.out += (b"%x\r\n" % len(body), body, b"\r\n") if self.chunked else (body,)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        self.done, self.reuse = True, self.parser.should_keep_alive()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self.done:
                self.fail()
                return
        client = self.client
        if client is not None and self.out:
            client.write(self.out)
            self.out = []
        if self.done and client is not None:
            self.client = client.upstream = None
            if self.reuse:
                self.reuse = False
                self.pool.idle.append(self)
            elif self.transport is not None:
                self.transport.close()
            client.finish(b"", client.keep_alive)

    def fail(self) -> None:
        client, self.client = self.client, None
        if self.transport is not None:
            self.transport.close()
        if client is None:
            return
        client.upstream = None
        if not self.started:
            client.finish(BAD_GATEWAY, keep=False)
        elif self.eof_framed:  # the end of a close-delimited answer
            client.write([*self.out, b"0\r\n\r\n"])
            client.finish(b"", client.keep_alive)
        else:
            client.finish(b"", keep=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        self.fail()


class Client(asyncio.Protocol):
    """One client connection: its requests, one after the other, forwarded or gated."""

    def __init__(self, pool: Pool, gate: Gate) -> None:
        self.pool, self.gate = pool, gate
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.busy = self.keep_alive = False
        self.queue: collections.deque[tuple[bytes, bool, bool]] = collections.deque()
        self.url, self.head, self.body = b"", [b""], [b""]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # HttpParserUpgrade too: no tunnels here
            self.queue.clear()
            self.finish(BAD_REQUEST, keep=False)

    def on_message_begin(self) -> None:
        self.url, self.head, self.body = b"", [b""], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in REQUEST_DROP:
            self.head.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        blocked = self.gate.blocks(self.url)
        body = b"".join(self.body)
        self.head[0] = b"%s %s HTTP/1.1\r\n" % (method, self.url)
        if body or method in (b"POST", b"PUT", b"PATCH"):
            self.head.append(b"Content-Length: %d\r\n" % len(body))
        self.head.append(b"\r\n")
        data = b"" if blocked else b"".join(self.head) + body
        self.queue.append((data, method == b"HEAD", self.parser.should_keep_alive()))
        self.next()

    def next(self) -> None:
        while self.queue and not self.busy and self.transport is not None:
            data, head_only, self.keep_alive = self.queue.popleft()
            if not data:
                self.finish(self.gate.answer[self.keep_alive], self.keep_alive)
            else:
                self.busy = True
                self.pool.send(self, data, head_only)

    def write(self, out: list[bytes]) -> None:
        if self.transport is not None:
            self.transport.writelines(out)

    def finish(self, answer: bytes, keep: bool) -> None:
        """The current exchange is over (`answer`: what is still to send)."""
        self.busy = False
        if self.transport is None:
            return
        if answer:
            self.transport.write(answer)
        if keep:
            self.next()
        else:
            self.transport.close()
            self.transport = None

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        up, self.upstream = self.upstream, None
        if up is not None:  # mid-answer: that connection cannot be reused
            up.client = None
            if up.transport is not None:
                up.transport.close()


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    pool, gate = Pool(host or "127.0.0.1", int(port)), Gate(args.gate_prefix, args.gate_file,
                                                              args.gate_body)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(pool, gate), args.host, args.port,
                                      backlog=4096)
    gate.watch()
    await until_signalled(server)


async def until_signalled(server: asyncio.AbstractServer) -> None:
    """Serve until SIGTERM or SIGINT, then close the server."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    parser.add_argument("--gate-prefix", help="answer the JSON 503 under this prefix")
    parser.add_argument("--gate-file", help="only while this file exists (else: always)")
    parser.add_argument("--gate-body", default=BODY)
    run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
