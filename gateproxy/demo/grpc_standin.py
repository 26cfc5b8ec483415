"""A stand-in for the gRPC-era docker-runner, for `gateproxy demo --grpc` and the tests.

A real gRPC server (grpclib, the probe's own library) on loopback with the runner's
`RunnerService/Ready`, which checks the x-dr-* signature as the runner does when a secret
is set, and the standard `grpc.health.v1.Health/Check`. Like the HTTP stand-ins it starts
and stops on a fixed port; stopping also drops the open connections, as a runner that
exits does.
"""

from __future__ import annotations

import asyncio
import socket
import time
from asyncio import BaseTransport
from typing import Literal

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream

from gateproxy.config.settings import GRPC_READY_METHOD
from gateproxy.monitor.grpc_probe import (
    HEALTH_CHECK,
    SERVING,
    RawCodec,
    health_response,
    string_message,
)
from gateproxy.monitor.signing import Verifier

Mode = Literal["ok", "unavailable", "hang"]


class _Server(Server):
    """grpclib's server, remembering its connections so that stop() can drop them (its
    close() only stops listening)."""

    def __init__(self, handlers: list[GrpcRunner]) -> None:
        super().__init__(handlers, codec=RawCodec())
        self.transports: set[BaseTransport] = set()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        made = protocol.connection_made

        def connection_made(transport: BaseTransport) -> None:
            self.transports.add(transport)
            made(transport)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol


class GrpcRunner:
    """RunnerService/Ready answering by `mode`; Health/Check answering `health` (a
    ServingStatus) for every service name."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, secret: str | None = None
                 ) -> None:
        self.host = host
        self.port = port
        self.mode: Mode = "ok"
        self.health = SERVING
        self.verifier = Verifier(secret) if secret else None
        self.changed_at = time.monotonic()
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"grpc://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def __mapping__(self) -> dict[str, Handler]:
        return {
            GRPC_READY_METHOD: Handler(self._ready, Cardinality.UNARY_UNARY, bytes, bytes),
            HEALTH_CHECK: Handler(self._check, Cardinality.UNARY_UNARY, bytes, bytes),
        }

    async def _ready(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        if self.verifier is not None:
            headers = {k: v for k, v in (stream.metadata or {}).items()
                       if isinstance(v, str)}
            reason = self.verifier.check("POST", GRPC_READY_METHOD, headers,
                                         int(time.time() * 1000))
            if reason is not None:
                raise GRPCError(Status.UNAUTHENTICATED, reason)
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.mode == "unavailable":
            raise GRPCError(Status.UNAVAILABLE, "docker daemon unreachable (stand-in)")
        await stream.send_message(string_message("ready"))

    async def _check(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        await stream.send_message(health_response(self.health))

    async def start(self) -> None:
        if self._server is not None:
            return
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        server = _Server([self])
        await server.start(sock=sock)
        self._server = server
        self.changed_at = time.monotonic()

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            self.changed_at = time.monotonic()
            server.close()
            for transport in server.transports:
                transport.close()
            await server.wait_closed()

    async def flip(self) -> None:
        await (self.stop() if self.running else self.start())
