"""The HTTP/2 yardstick: the ceiling of the `h2` library here, a bare h2c server that
answers every stream itself (no upstream, no policy), on `asyncio.Protocol` and uvloop.

What a proxy built on `h2` can reach is bounded by what this reaches: an HTTP/2 front end
in pure Python parses and writes every frame, HPACK block and window update itself.

    python bench/h2_yardstick.py --port 8081     # then, e.g.:
    h2load -c 16 -m 10 -n 100000 http://127.0.0.1:8081/api/ping
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from yardstick import run, until_signalled  # bench/yardstick.py

BODY = (b'{"status":"ok","service":"platform-server","items":[1,2,3],'
        b'"padding":"0123456789abcdef0123"}')
HEADERS = [(b":status", b"200"), (b"content-type", b"application/json"),
           (b"content-length", str(len(BODY)).encode())]


class Server(asyncio.Protocol):
    """One h2c connection: every request stream gets the same small JSON answer."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            if self.transport is not None:
                self.transport.write(conn.data_to_send())
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.StreamEnded):
                conn.send_headers(event.stream_id, HEADERS)
                conn.send_data(event.stream_id, BODY, end_stream=True)
        if self.transport is not None:
            self.transport.write(conn.data_to_send())


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    await until_signalled(await loop.create_server(Server, host, port, backlog=4096))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
