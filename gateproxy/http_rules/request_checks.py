"""Requests llhttp accepts but no upstream should see (docs/headers.md).

A Host header that is not a host, none in HTTP/1.1, or more than one (RFC 9112 section
3.2), a Transfer-Encoding in HTTP/1.0, an
absolute-form target naming another host than `Host` (RFC 9112 section 3.2.2: the proxy
and the upstream would disagree on which host was asked for), user information in the
target, and an HTTP version other than 1.x.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateproxy.core import answers
from gateproxy.core.answers import Answer

# RFC 3986 host (IP literal, IPv4 or reg-name) and optional port.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _same_host(authority: str, host: str, scheme: str) -> bool:
    default = _DEFAULT_PORTS.get(scheme, "")

    def norm(value: str) -> str:
        value = value.lower()
        return value[:-len(default)] if default and value.endswith(default) else value

    return norm(authority) == norm(host)


def problem(version: tuple[int, int], hosts: Sequence[str], target: str,
            transfer_encoding: bool = False) -> Answer | None:
    """The answer to a request llhttp parsed but no upstream should see, or None.
    `transfer_encoding`: the request came with one."""
    if version[0] != 1:
        return answers.error("http_version_not_supported",
                             "only HTTP/1.0 and HTTP/1.1 are served", close=True)
    if transfer_encoding and version < (1, 1):
        # RFC 9112 section 6.1: faulty framing; what follows cannot be trusted.
        return answers.error("bad_request", "HTTP/1.0 has no Transfer-Encoding", close=True)
    if len(hosts) > 1:
        return answers.error("bad_request", "the request has more than one Host header")
    if not hosts and version >= (1, 1):
        return answers.error("bad_request", "an HTTP/1.1 request needs a Host header")
    host = hosts[0] if hosts else None
    if host is not None and not _HOST.fullmatch(host):
        return answers.error("bad_request", "the Host header is not a host name")
    if not target.startswith("/") and "://" in target[:8]:
        scheme, _, rest = target.partition("://")
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if "@" in authority:
            return answers.error("bad_request", "the request target carries user information")
        if host is not None and not _same_host(authority, host, scheme.lower()):
            return answers.error(
                "bad_request", "the request target names another host than the Host header")
    return None
