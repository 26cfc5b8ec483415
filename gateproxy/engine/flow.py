"""Flow control between the two sides of an exchange: `Chunks`, a bounded queue of body
bytes that pauses the socket it is filled from, and `Drain`, what a writer awaits while
the socket it writes to is full (the model: uvicorn's `flow_control.py`).

A body is never held whole: a side reads at most `HIGH_WATER` bytes ahead of the side
that writes them on. Once its reader is ready, a `Chunks` is piped: bytes go straight to
a `Target` as they come, and the target holds the source back while its own socket is
full. So a slow reader at either end costs bounded memory here and holds the other end
back through TCP.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

HIGH_WATER: Final = 256 * 1024  # bytes queued before the source is paused
LOW_WATER: Final = 64 * 1024  # ...and resumed


class Target(Protocol):
    """Where a piped `Chunks` delivers (an upstream connection sending a request body)."""

    def body_data(self, data: bytes) -> None: ...

    def body_end(self) -> None: ...

    def body_failed(self, exc: BaseException) -> None: ...


class Chunks:
    """Body bytes on their way from one socket to another, in order, with their end or
    their failure. `pause` and `resume` hold the source socket back."""

    __slots__ = ("_chunks", "_paused", "_target", "_waiter", "dropping", "ended", "error",
                 "pause", "received", "resume", "size")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._chunks: deque[bytes] = deque()
        self.size = 0
        self.received = 0  # every byte fed, dropped ones included
        self.ended = False
        self.error: BaseException | None = None
        self.dropping = False  # nobody will read: bytes are counted and dropped
        self.pause = pause
        self.resume = resume
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._target: Target | None = None

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.dropping:
            return
        if self._target is not None:
            self._target.body_data(data)
            return
        self._chunks.append(data)
        self.size += len(data)
        if self.size > HIGH_WATER and not self._paused:
            self._paused = True
            self.pause()
        self._wake()

    def end(self) -> None:
        self.ended = True
        target, self._target = self._target, None
        if target is not None:
            target.body_end()
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.ended and self.error is None:
            self.error = exc
            target, self._target = self._target, None
            if target is not None:
                target.body_failed(exc)
            self._wake()

    def drop(self) -> None:
        """Nothing will read the rest: what is queued and what comes is discarded."""
        self.dropping = True
        self._target = None
        self._chunks.clear()
        self.size = 0
        self.unhold()

    def pipe(self, target: Target) -> None:
        """From now on bytes go to `target` as they come, what is queued first."""
        self._target = target
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self.size = 0
            target.body_data(data)
            self._unpause()
        if self.error is not None:
            self._target = None
            target.body_failed(self.error)
        elif self.ended:
            self._target = None
            target.body_end()

    def unpipe(self) -> None:
        """The target is gone: bytes queue again (for nobody, until `drop`)."""
        self._target = None
        self.unhold()

    def hold(self) -> None:
        """The target's socket is full: the source waits."""
        if not self._paused:
            self._paused = True
            self.pause()

    def unhold(self) -> None:
        if self._paused:
            self._paused = False
            self.resume()

    def whole(self) -> bytes | None:
        """All of the body when it has all come already, else None."""
        if not self.ended or self.error is not None:
            return None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.size = 0
        return data

    async def read(self) -> bytes:
        """What has come since the last read; b"" at the end. Raises the failure."""
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.ended:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.size = 0
        self._unpause()
        return data

    def _unpause(self) -> None:
        if self._paused and self.size <= LOW_WATER:
            self._paused = False
            self.resume()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Drain:
    """A transport's `pause_writing`/`resume_writing`, as something a writer awaits;
    `lost` ends every wait (the writer then finds its transport closing)."""

    __slots__ = ("_waiter", "paused")

    def __init__(self) -> None:
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._release()

    def lost(self) -> None:
        self.paused = False
        self._release()

    async def wait(self) -> None:
        if not self.paused:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    def _release(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _nothing() -> None:
    return None


# The body of every request without one: ended, empty, shared (nothing is ever fed to
# it, and what can happen to it, `drop` and `fail`, changes nothing that is read).
NO_BODY: Final = Chunks(_nothing, _nothing)
NO_BODY.end()
