"""One readiness probe, signed the way the platform-server signs its calls: over HTTP
here, over gRPC in gateproxy/monitor/grpc_probe.py (imported only when a dependency
probes that way).

A probe never raises: every way it can fail becomes a ProbeError with its own code.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import orjson
from yarl import URL

from gateproxy.core.dependency import ProbeError, probe_url
from gateproxy.core.model import Dependency
from gateproxy.monitor.signing import sign

if TYPE_CHECKING:
    from gateproxy.monitor.grpc_probe import GrpcProber

_BODY_LIMIT = 64 * 1024  # enough for an error message; a 10 MB answer is not read


@dataclass(frozen=True, slots=True)
class ProbeResult:
    duration_ms: int
    error: ProbeError | None  # None: success


class Prober:
    """Sends readiness probes: HTTP ones on a connection-less client session of its own,
    gRPC ones on one channel per dependency (GrpcProber)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._grpc: GrpcProber | None = None

    def _grpc_prober(self) -> GrpcProber:
        if self._grpc is None:
            # Here, not at the top: HTTP-only configurations never load a gRPC library.
            from gateproxy.monitor.grpc_probe import GrpcProber

            self._grpc = GrpcProber()
        return self._grpc

    def forget(self, name: str) -> None:
        """The dependency is gone or probes another way now: close its gRPC channel."""
        if self._grpc is not None:
            self._grpc.forget(name)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # A fresh connection per probe: a probe must see a refused or dead listener,
            # not a pooled socket that happened to survive.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0, ttl_dns_cache=1),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "gateproxy-probe"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None

    async def probe(self, dep: Dependency) -> ProbeResult:
        started = time.monotonic()
        timeout = dep.probe_timeout_ms / 1000
        try:
            async with asyncio.timeout(timeout):
                if dep.probe == "grpc":
                    error = await self._grpc_prober().probe(dep, timeout)
                else:
                    self.forget(dep.name)
                    error = await self._http(dep)
        except TimeoutError:
            error = ProbeError("timeout", f"no answer within {dep.probe_timeout_ms} ms")
        except Exception as exc:  # a probe must never take the monitor down
            error = classify(exc)
        return ProbeResult(round((time.monotonic() - started) * 1000), error)

    async def _http(self, dep: Dependency) -> ProbeError | None:
        url = URL(probe_url(dep.base_url, dep.ready_path), encoded=True)
        headers = {}
        if dep.shared_secret:
            headers = sign(dep.shared_secret, "GET", url.raw_path_qs,
                           int(time.time() * 1000), str(uuid.uuid4()))
        async with self._client().get(url, headers=headers, allow_redirects=False) as resp:
            # The answer must arrive whole (up to _BODY_LIMIT) within the probe timeout: a
            # server that sends a status line and then hangs is hung, whatever the status.
            body = await _read_prefix(resp, _BODY_LIMIT)
            if 200 <= resp.status < 300:
                return None
            return ProbeError(f"http_{resp.status}", _error_message(resp, body), resp.status)


async def _read_prefix(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to its end or `limit` bytes, whichever comes first."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.readany()
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:limit]


def _error_message(resp: aiohttp.ClientResponse, body: bytes) -> str:
    """The runner's own `error.message` when it sent its JSON envelope."""
    try:
        data = orjson.loads(body)
        message = data["error"]["message"]
        if isinstance(message, str) and message:
            return message[:500]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return f"HTTP {resp.status} {resp.reason or ''}".strip()


def classify(exc: BaseException) -> ProbeError:
    """One errorCode per way of failing."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return ProbeError("dns_failure", text)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError
                  | ssl.SSLError):
        return ProbeError("tls_error", text)
    if isinstance(exc, aiohttp.ClientConnectorError):
        if exc.os_error.errno == errno.ECONNREFUSED:
            return ProbeError("connection_refused", text)
        if exc.os_error.errno == errno.ECONNRESET:
            return ProbeError("connection_reset", text)
        return ProbeError("connect_error", text)
    if isinstance(exc, ConnectionRefusedError):  # a bare one: from the gRPC channel
        return ProbeError("connection_refused", text)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ProbeError("connection_reset", "the server closed the connection")
    if isinstance(exc, ConnectionResetError) or (
        isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)
    ):
        return ProbeError("connection_reset", text)
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return ProbeError("bad_response", text)
    if isinstance(exc, aiohttp.InvalidURL):
        return ProbeError("invalid_url", text)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ProbeError("network_error", text)
    return ProbeError("unknown_error", text)
