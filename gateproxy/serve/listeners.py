"""What every listening process shares: the error of a start that cannot be, and the
wait for the signal to stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal


class StartupError(Exception):
    """The proxy cannot start (exit code 1): a port is taken, a required dependency is
    down."""


async def until_signalled(signals: tuple[signal.Signals, ...] = (signal.SIGTERM,
                                                                 signal.SIGINT)) -> None:
    """Return when one of `signals` arrives."""
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, arrived.set)
    try:
        await arrived.wait()
    finally:
        for sig in signals:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
