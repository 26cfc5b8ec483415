"""Request paths in normal form, their readings, and the gated-prefix table. Pure.

A request path is judged and forwarded in one form (docs/gate.md): `normalise` decodes
percent-encoded unreserved characters once, merges repeated slashes, then resolves dot
segments; letter case and every other escape stay byte for byte. The routers behind the
proxy (Fastify, Express, the WHATWG URL parser) then have no dot segment or encoded
letter left to read differently from the gate.

`readings` adds the lenient readings a router might still make of a normalised path
(an encoded slash or a backslash taken for `/`, `;parameters` dropped, with or without
dot segments resolved after that), so that a path is gated when any of them matches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class BadPath(ValueError):
    """A request target no upstream should see: control characters, or above the root."""


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"/{2,}")
# A path without any of these is already in normal form (the common case: one search).
_NEEDS_WORK = re.compile(r"[\x00-\x1f\x7f]|%|//|/\.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]|%(?:[01][0-9A-Fa-f]|7[Ff])")
# What a lenient router may take for a path separator, and for a segment's end.
_DOUBT = re.compile(r"%(?:2[Ff]|5[Cc])|\\|;")
_SEPARATOR = re.compile(r"%(?:2[Ff]|5[Cc])|\\")


def split_target(target: str) -> tuple[str, str]:
    """The path of an origin-form or absolute-form request target, and what follows it
    (`?query`, `#fragment`) exactly as received. `*` is its own path."""
    if not target.startswith("/"):
        if target[:8].lower().startswith(("http://", "https://")):
            slash = target.find("/", target.index("//") + 2)
            if slash < 0:
                cut = _end_of_path(target)
                return "/", target[cut:]
            target = target[slash:]
        elif target == "*":
            return "*", ""
        else:
            raise BadPath("the request target is not a path")
    cut = _end_of_path(target)
    if cut == len(target):
        return target, ""
    return target[:cut] or "/", target[cut:]


def _end_of_path(target: str) -> int:
    """Where a target's path ends: at its first `?` or `#`, or at its end."""
    query, fragment = target.find("?"), target.find("#")
    if query < 0:
        return len(target) if fragment < 0 else fragment
    return query if fragment < 0 else min(query, fragment)


def _decode_unreserved(path: str) -> str:
    def repl(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in _UNRESERVED else m.group(0)

    return _PERCENT.sub(repl, path)


def _remove_dots(path: str, clamp: bool = False) -> str:
    """RFC 3986 section 5.2.4 on a path with single slashes: a final `.` or `..` leaves
    a trailing slash. Above the root is BadPath, or the root itself with `clamp`."""
    out: list[str] = []
    segments = path.split("/")[1:]
    trailing = False
    for seg in segments:
        trailing = seg in ("", ".", "..")
        if seg == "..":
            if out:
                out.pop()
            elif not clamp:
                raise BadPath("the path climbs above the root")
        elif seg not in ("", "."):
            out.append(seg)
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")


def normalise(path: str) -> str:
    """The form a path is judged and forwarded in. Idempotent; a path already in that
    form comes back unchanged. Raises BadPath."""
    if path == "*" or not _NEEDS_WORK.search(path):
        return path
    if _CONTROL.search(path):
        raise BadPath("the path contains control characters")
    return _remove_dots(_SLASHES.sub("/", _decode_unreserved(path)))


def key(path: str) -> str:
    """A normalised path as prefixes are compared with it: lower case, no trailing
    slash (Express ignores both; gating more spellings than Fastify is only safer)."""
    return path.rstrip("/").lower() or "/"


def canonical(path: str) -> str:
    """`key(normalise(path))`: the form configured prefixes are stored in."""
    return key(normalise(path))


def readings(path: str) -> tuple[str, ...]:
    """The keys of every reading of normalised `path` that some router might make."""
    plain = key(path)
    if not _DOUBT.search(path):
        return (plain,)
    forms = {plain}
    slashed = _SLASHES.sub("/", _SEPARATOR.sub("/", path))
    for base in (path, slashed):
        for variant in (base, "/".join(s.split(";", 1)[0] for s in base.split("/"))):
            variant = _SLASHES.sub("/", variant)
            forms.add(key(variant))  # dots kept: they are parameter values to Fastify
            forms.add(key(_remove_dots(variant, clamp=True)))  # as the WHATWG parser
    return tuple(forms)


def canonical_prefix(prefix: str) -> str:
    """A configured prefix in the form request paths are compared with."""
    if "?" in prefix or ";" in prefix or "#" in prefix:
        raise BadPath("a prefix may not contain '?', '#' or ';'")
    return canonical(prefix)


@dataclass(frozen=True, slots=True)
class Rule(Generic[T]):
    prefix: str
    methods: frozenset[str] | None
    target: T


class RouteTable(Generic[T]):
    """Prefix rules over path keys; a lookup costs O(path depth), whatever the number
    of rules, because it walks the path's own prefixes through a dict."""

    def __init__(self, rules: Iterable[Rule[T]]) -> None:
        self.rules = tuple(rules)
        self._by_prefix: dict[str, list[Rule[T]]] = {}
        # Every proper prefix of a rule's prefix: a walk stops as soon as it leaves them.
        self._stems: set[str] = set()
        for rule in self.rules:
            self._by_prefix.setdefault(rule.prefix, []).append(rule)
            cut = rule.prefix.find("/", 1)
            while cut > 0:
                self._stems.add(rule.prefix[:cut])
                cut = rule.prefix.find("/", cut + 1)
        self._root = tuple(self._by_prefix.get("/", ()))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def match(self, method: str, path: str,
              accept: Callable[[T], bool] | None = None) -> Rule[T] | None:
        """The first rule whose prefix covers the key `path`, whose methods allow
        `method` and whose target `accept` takes (every target when None)."""
        for rule in self._root:
            if (rule.methods is None or method in rule.methods) and (
                    accept is None or accept(rule.target)):
                return rule
        by_prefix = self._by_prefix
        stems = self._stems
        end = 0
        while True:
            end = path.find("/", end + 1)
            prefix = path if end < 0 else path[:end]
            rules = by_prefix.get(prefix)
            if rules:
                for rule in rules:
                    if (rule.methods is None or method in rule.methods) and (
                            accept is None or accept(rule.target)):
                        return rule
            if end < 0 or prefix not in stems:
                return None
