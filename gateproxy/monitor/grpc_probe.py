"""Readiness over gRPC (the gRPC-era docker-runner): a unary call on a channel kept open
per dependency, signed like the HTTP probe with the x-dr-* headers as metadata.

grpclib (pure Python, asyncio-native) rather than grpcio: it runs on the proxy's own event
loop (uvloop included) without threads, it surfaces a refused or reset connection as the
OSError it is (so the HTTP probe's error codes apply unchanged), and it never retries or
backs off on its own: the monitor's backoff alone paces reconnection. No generated code:
messages pass through as bytes (the Ready request is empty; the health request is
hand-encoded).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import h2.exceptions
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from yarl import URL

from gateproxy.core.dependency import ProbeError
from gateproxy.core.model import Dependency
from gateproxy.monitor.signing import sign

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# grpc.health.v1.HealthCheckResponse.ServingStatus
HEALTH_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1


class RawCodec(CodecBase):
    """Messages are the bytes on the wire: no protobuf library, no generated code."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


def string_message(text: str) -> bytes:
    """A message whose field 1 is the string `text`: HealthCheckRequest{service} ("" is the
    whole server), the runner's ReadyResponse{status}."""
    data = text.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def health_response(status: int) -> bytes:
    """HealthCheckResponse{status} (field 1, varint), for the stand-ins."""
    return b"\x08" + _varint(status) if status else b""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def serving_status(message: bytes) -> int:
    """HealthCheckResponse.status (field 1, varint); unknown fields are skipped."""
    pos, status = 0, 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(message) or shift > 63:
                raise ValueError("truncated varint")
            byte = message[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(message):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
            if field == 1:
                status = value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length = varint()  # not `pos += varint()`: that adds to pos as read before
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(message):
            raise ValueError("truncated field")
    return status


def target(base_url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of a validated grpc:// or grpcs:// base_url."""
    url = URL(base_url)
    assert url.host is not None and url.port is not None  # config checked both
    return url.host, url.port, url.scheme == "grpcs"


def status_error(exc: GRPCError) -> ProbeError:
    """A call that ended with a non-OK status: `grpc_<status>`, or `timeout` when the
    deadline passed on the server's side."""
    message = exc.message or exc.status.name
    if exc.status is Status.DEADLINE_EXCEEDED:
        return ProbeError("timeout", message)
    return ProbeError(f"grpc_{exc.status.name.lower()}", message[:500])


class GrpcProber:
    """One channel per dependency, opened on first use and kept open; after a failure that
    leaves the connection in doubt it is closed, and the next probe (paced by the monitor's
    backoff) connects again."""

    def __init__(self) -> None:
        self._channels: dict[str, tuple[tuple[str, int, bool], Channel]] = {}

    def _channel(self, dep: Dependency) -> Channel:
        where = target(dep.base_url)
        found = self._channels.get(dep.name)
        if found is not None and found[0] == where:
            return found[1]
        self.forget(dep.name)
        host, port, tls = where
        channel = Channel(host, port, ssl=True if tls else None, codec=RawCodec())
        self._channels[dep.name] = (where, channel)
        return channel

    def forget(self, name: str) -> None:
        found = self._channels.pop(name, None)
        if found is not None:
            found[1].close()

    def close(self) -> None:
        for name in list(self._channels):
            self.forget(name)

    async def probe(self, dep: Dependency, timeout_s: float) -> ProbeError | None:
        """None when ready; raises only what probe.classify maps (OSError, TimeoutError)."""
        if dep.health_service is not None:
            method, request = HEALTH_CHECK, string_message(dep.health_service)
        else:
            method, request = dep.ready_path, b""
        metadata = {}
        if dep.shared_secret:
            metadata = sign(dep.shared_secret, "POST", method, int(time.time() * 1000),
                            str(uuid.uuid4()))
        call = UnaryUnaryMethod[bytes, bytes](self._channel(dep), method, bytes, bytes)
        try:
            reply = await call(request, timeout=timeout_s, metadata=metadata)
        except GRPCError as exc:  # the server answered: the connection is fine
            return status_error(exc)
        except StreamTerminatedError as exc:
            self.forget(dep.name)
            return ProbeError("connection_reset", str(exc) or "the stream was reset")
        except (ProtocolError, h2.exceptions.ProtocolError) as exc:
            self.forget(dep.name)
            return ProbeError("bad_response", f"not a gRPC server? {exc}")
        except BaseException:  # refused, reset, timed out, cancelled: start afresh next time
            self.forget(dep.name)
            raise
        if dep.health_service is None:
            return None
        try:
            status = serving_status(reply)
        except ValueError as exc:
            return ProbeError("bad_response", f"unreadable HealthCheckResponse: {exc}")
        if status == SERVING:
            return None
        name = HEALTH_STATUSES.get(status, str(status))
        return ProbeError(f"grpc_health_{name.lower()}",
                          f"health status {name} for service {dep.health_service!r}")
