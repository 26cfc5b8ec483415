"""Who may change the proxy's state: one pure decision from the caller's address and
credentials.

The admin endpoints that change state (maintenance) are closed by default. Without an
`admin_token` they accept only callers on the loopback (127.0.0.0/8, ::1): the pod's own
containers, `kubectl exec` and `kubectl port-forward`. With a token, every caller needs
it, the loopback included: a token that is set is meant to be the one way in.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Final

FORBIDDEN_MESSAGE: Final = ("only callers on the loopback may change state while "
                            "GATEPROXY_ADMIN_TOKEN is not set")
UNAUTHORIZED_MESSAGE: Final = "this endpoint needs Authorization: Bearer <admin_token>"


@dataclass(frozen=True, slots=True)
class Admission:
    """The decision on one attempt: `refusal` is the error code to answer with (None:
    admitted); `token` says whether a valid bearer token came with it (for the log)."""

    refusal: str | None
    token: bool


def is_loopback(peer: str | None) -> bool:
    """Whether `peer` (an address as the transport reports it) is on the loopback. An
    IPv4 caller on a dual-stack socket shows as `::ffff:127.0.0.1`; an address that is
    not an IP (a Unix socket's, none at all) is not the loopback."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _valid(authorization: str | None, token: str | None) -> bool:
    if token is None or authorization is None:
        return False
    given = authorization.encode("utf-8", "surrogateescape")
    # Constant time: the comparison must not tell how much of a guess was right.
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def admit(peer: str | None, authorization: str | None, token: str | None) -> Admission:
    """Whether a caller at `peer` with this `Authorization` header may change state."""
    valid = _valid(authorization, token)
    if token is not None:
        return Admission(None if valid else "unauthorized", valid)
    return Admission(None if is_loopback(peer) else "forbidden", False)
