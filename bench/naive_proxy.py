"""A naive reverse proxy, the calibration target of bench/run.py.

What a careful afternoon with public APIs gives: aiohttp's `web` server, a keep-alive pool
of `asyncio.Protocol` upstream connections whose answers httptools parses, the body
buffered whole. No gate, no metrics, no limits, no header rules beyond dropping the
hop-by-hop ones. gateproxy's forwarded path should cost no more per request than this.

    python bench/naive_proxy.py LISTEN_PORT UPSTREAM_PORT     # on 127.0.0.1
"""

from __future__ import annotations

import asyncio
import sys

import httptools
from aiohttp import web

HOST = "127.0.0.1"
DROP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                  "proxy-connection", "te", "trailer", "upgrade"})


class Upstream(asyncio.Protocol):
    """One keep-alive connection; `exchange` sends a request and waits for its answer."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.keep_alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(exc or ConnectionError("the upstream closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        # Read here: once the message is complete, httptools has reset this flag.
        self.keep_alive = self.parser.should_keep_alive()
        assert self.done is not None
        self.done.set_result(None)

    async def exchange(self, head: bytes) -> web.Response:
        self.headers, self.body = [], []
        self.done = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(head)
        await self.done
        headers = [(k, v) for k, v in self.headers if k.lower() not in DROP]
        return web.Response(status=self.parser.get_status_code(), headers=headers,
                            body=b"".join(self.body))


def main(listen_port: int, upstream_port: int) -> None:
    idle: list[Upstream] = []

    async def proxy(request: web.Request) -> web.Response:
        conn = idle.pop() if idle else None
        if conn is None or conn.transport is None:
            _, conn = await asyncio.get_running_loop().create_connection(
                Upstream, HOST, upstream_port)
        lines = [f"{request.method} {request.raw_path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() not in DROP]
        response = await conn.exchange(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if conn.keep_alive:
            idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        return response

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", proxy)
    try:
        import uvloop  # the same event loop as gateproxy when it is installed
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    web.run_app(app, host=HOST, port=listen_port, access_log=None, print=None,
                loop=loop_factory() if loop_factory else None)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
