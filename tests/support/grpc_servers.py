"""The reference gRPC docker-runner of the tests: grpcio's asyncio server (another gRPC
implementation than the probe's grpclib) with RunnerService/Ready checking the x-dr-*
metadata as the runner does, and grpcio-health-checking's own Health service."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateproxy.config.settings import GRPC_READY_METHOD
from gateproxy.monitor.signing import Verifier

SERVICE, METHOD = GRPC_READY_METHOD.strip("/").split("/")
READY_RESPONSE = b"\x0a\x05ready"  # ReadyResponse{status: "ready"}


class ReferenceRunner:
    """Start, stop and start again on the same port; `mode` picks Ready's answer."""

    def __init__(self, secret: str | None = None) -> None:
        self.port = 0
        self.mode: Literal["ok", "unavailable", "hang"] = "ok"
        self.verifier = Verifier(secret) if secret else None
        self.health = health.aio.HealthServicer()
        self.peers: list[str] = []  # one entry per Ready call: who called
        self.rejected: list[str] = []  # the reasons of the refused signatures
        self._server: grpc.aio.Server | None = None

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    async def _ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.peers.append(context.peer())
        if self.verifier is not None:
            metadata = {k: v for k, v in context.invocation_metadata() or ()
                        if isinstance(v, str)}
            reason = self.verifier.check("POST", GRPC_READY_METHOD, metadata,
                                         int(time.time() * 1000), request)
            if reason is not None:
                self.rejected.append(reason)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.mode == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "docker ping failed: no socket")
        return READY_RESPONSE

    async def set_health(self, service: str, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(service, status)

    async def start(self) -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(self._ready)}),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(None)
