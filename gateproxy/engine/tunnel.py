"""WebSocket sessions after the upstream's 101: bytes relayed both ways as they come, as
HAProxy and Envoy do, so that extensions (permessage-deflate) and subprotocols pass
untouched.

Each direction is one coroutine moving bytes from a `Chunks` to the other socket at that
socket's pace (gateproxy/engine/flow.py). The relay reads frame headers, never payloads
(`Frames`), so that it knows where frames begin: when the proxy shuts down it closes each
session with a Close frame of 1001 (going away) to both ends, each at a frame boundary,
then ends the connections once both ends have had a moment to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Final, Protocol

from gateproxy.engine.flow import Chunks, Drain

GOING_AWAY: Final = 1001
INTERNAL_ERROR: Final = 1011
CLOSE_TIMEOUT: Final = 5.0  # seconds for the ends to answer a Close before the cut
_CLOSE_OPCODE: Final = 0x88  # FIN and opcode 8


class Side(Protocol):
    """One end of a tunnel: its transport and its drain (both connection kinds)."""

    transport: asyncio.Transport | None
    drain: Drain
    lost: bool


class Frames:
    """Where WebSocket frames begin in a byte stream, from their headers alone."""

    __slots__ = ("_header", "_need", "saw_close")

    def __init__(self) -> None:
        self._need = 0  # payload bytes left of the current frame
        self._header = b""  # a frame header that came in pieces
        self.saw_close = False  # a Close frame has begun

    @property
    def at_boundary(self) -> bool:
        return self._need == 0 and not self._header

    def feed(self, data: bytes) -> int | None:
        """Take `data` in; the offset just past the first frame that ends in it."""
        first = None
        i, n = 0, len(data)
        while i < n:
            if self._need:
                take = min(self._need, n - i)
                self._need -= take
                i += take
                if not self._need and first is None:
                    first = i
                continue
            header = self._header + data[i:i + 14]
            size = _header_size(header)
            if size is None:  # fewer than 14 bytes left, the header incomplete
                self._header = header
                return first
            i += size - len(self._header)
            self._header = b""
            if header[0] & 0x0F == 8:
                self.saw_close = True
            self._need = _payload_size(header)
            if not self._need and first is None:
                first = i
        return first


def _header_size(header: bytes) -> int | None:
    if len(header) < 2:
        return None
    length = header[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (
        4 if header[1] & 0x80 else 0)
    return size if len(header) >= size else None


def _payload_size(header: bytes) -> int:
    length = header[1] & 0x7F
    if length == 126:
        return int.from_bytes(header[2:4], "big")
    if length == 127:
        return int.from_bytes(header[2:10], "big")
    return length


def close_frame(code: int, masked: bool) -> bytes:
    """A Close frame with `code` and no reason; masked as a client must send it."""
    payload = code.to_bytes(2, "big")
    if not masked:
        return bytes((_CLOSE_OPCODE, len(payload))) + payload
    mask = os.urandom(4)
    return bytes((_CLOSE_OPCODE, 0x80 | len(payload))) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


class _Direction:
    """Bytes from one end to the other, and where the frames in them begin."""

    __slots__ = ("closed", "frames", "masked", "source", "target")

    def __init__(self, source: Chunks, target: Side, masked: bool) -> None:
        self.source = source
        self.target = target
        self.masked = masked  # toward the upstream, frames are a client's: masked
        self.frames = Frames()
        self.closed = False  # the proxy's own Close has gone this way

    def write(self, data: bytes) -> None:
        transport = self.target.transport
        if transport is not None and not self.target.lost:
            transport.write(data)

    def go_away(self) -> None:
        if not self.closed and self.frames.at_boundary:
            self.closed = True
            self.write(close_frame(GOING_AWAY, self.masked))


class Tunnel:
    """One relayed session: two directions and their end."""

    def __init__(self, client: Side, from_client: Chunks, upstream: Side,
                 from_upstream: Chunks) -> None:
        self._up = _Direction(from_client, upstream, masked=True)
        self._down = _Direction(from_upstream, client, masked=False)
        self._sides = (client, upstream)
        self.going_away = False
        loop = asyncio.get_running_loop()
        self._pumps = (loop.create_task(self._pump(self._up)),
                       loop.create_task(self._pump(self._down)))
        self.done: asyncio.Future[None] = loop.create_future()
        for pump in self._pumps:
            pump.add_done_callback(self._pump_done)

    async def _pump(self, direction: _Direction) -> None:
        source, target, frames = direction.source, direction.target, direction.frames
        with contextlib.suppress(Exception):
            while data := await source.read():
                if direction.closed:
                    # After the proxy's Close: nothing more goes this way; the end's own
                    # Close answers the other direction's.
                    frames.feed(data)
                    self._answered()
                    continue
                if self.going_away:
                    cut = frames.feed(data)
                    if cut is not None:
                        direction.write(data[:cut])
                        direction.go_away()
                        self._answered()
                        continue
                else:
                    frames.feed(data)
                direction.write(data)
                if target.drain.paused:
                    await target.drain.wait()
        if not direction.frames.saw_close and not direction.closed \
                and direction.frames.at_boundary:
            # The source vanished without a Close: the other end hears 1011 from the
            # proxy, not a bare end of its connection.
            direction.closed = True
            direction.write(close_frame(INTERNAL_ERROR, direction.masked))

    def _pump_done(self, _: asyncio.Future[None]) -> None:
        # One end has closed (or broken off): the other is closed too, after what is
        # already written to it.
        self._close()
        if all(pump.done() for pump in self._pumps) and not self.done.done():
            self.done.set_result(None)

    def _close(self) -> None:
        for side in self._sides:
            if side.transport is not None:
                side.transport.close()

    def go_away(self) -> None:
        """Close both ends with 1001, each at its next frame boundary."""
        self.going_away = True
        self._up.go_away()
        self._down.go_away()
        self._answered()

    def _answered(self) -> None:
        """Once the proxy's Close has gone both ways and each end has answered with its
        own, the connections end."""
        up, down = self._up, self._down
        if up.closed and down.closed and up.frames.saw_close and down.frames.saw_close:
            self._close()

    def cut(self) -> None:
        for pump in self._pumps:
            pump.cancel()


class Tunnels:
    """The open sessions: their count (the open-sessions gauge) and their end."""

    def __init__(self) -> None:
        self._open: set[Tunnel] = set()

    @property
    def open_count(self) -> int:
        return len(self._open)

    def open(self, client: Side, from_client: Chunks, upstream: Side,
             from_upstream: Chunks) -> asyncio.Future[None]:
        """Relay a session; its future is done when both ends are closed."""
        tunnel = Tunnel(client, from_client, upstream, from_upstream)
        self._open.add(tunnel)
        tunnel.done.add_done_callback(lambda _: self._open.discard(tunnel))
        return tunnel.done

    async def close_all(self) -> None:
        """Close every session with 1001, and give the ends CLOSE_TIMEOUT to answer."""
        tunnels = list(self._open)
        if not tunnels:
            return
        for tunnel in tunnels:
            tunnel.go_away()
        await asyncio.wait([t.done for t in tunnels], timeout=CLOSE_TIMEOUT)
        for tunnel in tunnels:
            if not tunnel.done.done():
                tunnel.cut()
