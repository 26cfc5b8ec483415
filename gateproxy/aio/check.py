"""Which of the fence's features this process uses, decided once at start-up.

- limits: the connection cap and the head and body timeouts (`server`);
- relay: relayed responses without aiohttp's own headers (`wire`);
- fast path: the gate's 503 and plain GETs answered from `data_received`, and the lean
  upstream client (`fastpath`, `client`); it builds on the other two, and the
  `fast_path` setting can turn it off.

A feature whose needs are missing from the installed aiohttp is off, with one WARNING
naming the first missing name; what replaces it uses public APIs only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from aiohttp import http_parser

from gateproxy.aio import client, fastpath, server, wire
from gateproxy.aio.needs import missing
from gateproxy.logs import log


@dataclass(frozen=True, slots=True)
class Fence:
    limits: bool
    relay: bool
    fast_path: bool


def inspect(fast_path: bool) -> Fence:
    """Check each feature's needs; log one WARNING for each that must be off."""
    problems = {
        "limits": missing(server.REQUIRES),
        "relay": wire.MISSING,
        "fast_path": missing((*fastpath.REQUIRES, *client.REQUIRES)),
    }
    consequences = {
        "limits": "no connection cap and no request head or body timeouts",
        "relay": "relayed answers carry Server: gateproxy where the upstream sent none",
        "fast_path": "every request takes aiohttp's usual path and ClientSession",
    }
    for feature, problem in problems.items():
        if problem is not None:
            log.warning("fence_feature_off", feature=feature, missing=problem,
                        consequence=consequences[feature],
                        message="the installed aiohttp lacks an internal this feature needs")
    limits = problems["limits"] is None
    relay = problems["relay"] is None
    return Fence(limits=limits, relay=relay,
                 fast_path=fast_path and limits and relay and problems["fast_path"] is None)


def parser_problem() -> str | None:
    """aiohttp's pure-Python HTTP parser has had request-smuggling bugs the C one has not:
    why this process would run on it, or None."""
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        return ("AIOHTTP_NO_EXTENSIONS is set, which selects aiohttp's pure-Python HTTP "
                "parser; unset it")
    fast = getattr(http_parser, "HttpRequestParserC", None)
    if fast is None or http_parser.HttpRequestParser is not fast:
        return "aiohttp's C HTTP parser is not available; reinstall aiohttp for this platform"
    return None
