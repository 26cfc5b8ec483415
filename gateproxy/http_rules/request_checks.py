"""Requests aiohttp's parser accepts but no upstream should see (docs/headers.md).

A Host header that is not a host, an absolute-form target naming another host than
`Host` (RFC 9112 section 3.2.2: the proxy and the upstream would disagree on which host
was asked for), user information in the target, and an HTTP version other than 1.x.
And one request after which the client connection must end: see `ends_connection`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

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


def problem(version: tuple[int, int], host: str | None, target: str) -> Answer | None:
    """The answer to a request aiohttp parsed but no upstream should see, or None."""
    if version[0] != 1:
        return answers.error("http_version_not_supported",
                             "only HTTP/1.0 and HTTP/1.1 are served", close=True)
    # aiohttp refuses a repeated Host header.
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


def ends_connection(headers: Mapping[str, str]) -> bool:
    """Whether the client connection must end after this request's answer: its body
    came with a Transfer-Encoding (chunked), so it may have had a trailer section, and
    aiohttp's C parser (3.14) keeps the last trailer field and hands it to the next
    request on the connection as a header of its own. Ending the connection drops that
    next request unanswered (an HTTP/1.1 client sends it again on a new connection),
    never with another request's field (tests/integration/test_aiohttp_trailers.py)."""
    return "Transfer-Encoding" in headers
