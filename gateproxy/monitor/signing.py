"""docker-runner's x-dr-* request signature (HMAC-SHA256 over method, path, time, nonce and
body hash): the probes sign with it, the stand-ins check it the way the runner does.

The same headers travel as HTTP headers (HTTP era) or as gRPC metadata (gRPC era, where the
method is always POST and the path is the full gRPC method path).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping

EMPTY_BODY_HASH = base64.b64encode(hashlib.sha256(b"").digest()).decode()
HEADERS = ("x-dr-timestamp", "x-dr-nonce", "x-dr-signature")
MAX_SKEW_MS = 60_000
_NONCES = 1000  # the runner remembers at most this many nonces, oldest dropped first


def sign(secret: str, method: str, path_qs: str, timestamp_ms: int, nonce: str,
         body: bytes = b"") -> dict[str, str]:
    """The x-dr-* headers for one request."""
    body_hash = (base64.b64encode(hashlib.sha256(body).digest()).decode()
                 if body else EMPTY_BODY_HASH)
    payload = "\n".join((method.upper(), path_qs, str(timestamp_ms), nonce, body_hash))
    digest = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return {
        "x-dr-timestamp": str(timestamp_ms),
        "x-dr-nonce": nonce,
        "x-dr-signature": base64.b64encode(digest).decode(),
    }


class Verifier:
    """The runner's check of one request, in its order (the first failure wins); a valid
    request's nonce is remembered so that a replay fails."""

    def __init__(self, secret: str, nonce_ttl_ms: int = 60_000) -> None:
        self.secret = secret
        self._ttl_ms = nonce_ttl_ms
        self._nonces: OrderedDict[str, int] = OrderedDict()  # nonce -> expiry (ms)

    def check(self, method: str, path_qs: str, headers: Mapping[str, str], now_ms: int,
              body: bytes = b"") -> str | None:
        """None when valid, else the runner's reason code."""
        if any(not headers.get(name) for name in HEADERS):
            return "missing_headers"
        timestamp, nonce = headers["x-dr-timestamp"], headers["x-dr-nonce"]
        if not timestamp.lstrip("-").isdigit():
            return "invalid_timestamp"
        if abs(now_ms - int(timestamp)) > MAX_SKEW_MS:
            return "timestamp_out_of_range"
        while self._nonces and next(iter(self._nonces.values())) <= now_ms:
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            return "replayed_nonce"
        expected = sign(self.secret, method, path_qs, int(timestamp), nonce, body)
        if not hmac.compare_digest(expected["x-dr-signature"].encode(),
                                   headers["x-dr-signature"].encode()):
            return "invalid_signature"
        self._nonces[nonce] = now_ms + self._ttl_ms
        if len(self._nonces) > _NONCES:
            self._nonces.popitem(last=False)
        return None
