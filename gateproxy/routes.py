"""Canonical request paths and the gated-prefix table.

The gate must hold for the most lenient router behind it, so a request path is read in
every way an upstream might read it (encoded slashes and backslashes as `/`, `;params`
dropped, both, neither) and gated when any reading matches. Nothing is decoded twice:
only percent-encoded unreserved characters are decoded, once.
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
_ENCODED_SLASH = re.compile(r"%(?:2[Ff]|5[Cc])|\\")
# Anything that is not plain printable ASCII, or that needs decoding or dot/slash work.
_NEEDS_WORK = re.compile(r"[^\x21-\x7e]|%|\\|;|//|/\.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]|%(?:[01][0-9A-Fa-f]|7[Ff])")


def request_path(target: str) -> str:
    """The path part of a request target (origin-form or absolute-form), query cut off."""
    if not target.startswith("/"):
        lowered = target[:8].lower()
        if lowered.startswith(("http://", "https://")):
            after_scheme = target.index("//") + 2
            slash = target.find("/", after_scheme)
            target = target[slash:] if slash >= 0 else "/"
        elif target == "*":
            return "*"
        else:
            raise BadPath("the request target is not a path")
    for sep in ("?", "#"):
        cut = target.find(sep)
        if cut >= 0:
            target = target[:cut]
    return target or "/"


def origin_form(target: str) -> str:
    """The target to send upstream: unchanged, except that an absolute-form target
    (`http://host/path?q`) becomes its path and query, exactly as received."""
    if target.startswith("/"):
        return target
    if target[:8].lower().startswith(("http://", "https://")):
        slash = target.find("/", target.index("//") + 2)
        if slash < 0:
            query = target.find("?")
            return "/" + (target[query:] if query >= 0 else "")
        return target[slash:]
    return target


def _decode_unreserved(path: str) -> str:
    def repl(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in _UNRESERVED else m.group(0).upper()

    return _PERCENT.sub(repl, path)


def _resolve(segments: Iterable[str]) -> str:
    out: list[str] = []
    for seg in segments:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                raise BadPath("the path climbs above the root")
            out.pop()
        else:
            out.append(seg)
    return ("/" + "/".join(out)).lower()


def canonical(path: str) -> str:
    """The strict canonical form: unreserved decoded, dots resolved, slashes merged,
    lower case, no trailing slash. Idempotent."""
    if _CONTROL.search(path):
        raise BadPath("the path contains control characters")
    if not _NEEDS_WORK.search(path):
        return path.rstrip("/").lower() or "/"
    return _resolve(_decode_unreserved(path).split("/"))


def readings(path: str) -> tuple[str, ...]:
    """Every canonical reading of `path` that some upstream router might use."""
    if _CONTROL.search(path):
        raise BadPath("the path contains control characters")
    if not _NEEDS_WORK.search(path):
        return (path.rstrip("/").lower() or "/",)
    decoded = _decode_unreserved(path)
    slashed = _ENCODED_SLASH.sub("/", decoded)
    forms = {_resolve(decoded.split("/")), _resolve(slashed.split("/"))}
    if ";" in decoded:
        forms.add(_resolve(s.split(";", 1)[0] for s in decoded.split("/")))
        forms.add(_resolve(s.split(";", 1)[0] for s in slashed.split("/")))
    return tuple(forms)


def canonical_prefix(prefix: str) -> str:
    """A configured prefix in the form request paths are compared with."""
    if "?" in prefix or ";" in prefix:
        raise BadPath("a prefix may not contain '?' or ';'")
    return canonical(prefix)


@dataclass(frozen=True, slots=True)
class Rule(Generic[T]):
    prefix: str
    methods: frozenset[str] | None
    target: T


class RouteTable(Generic[T]):
    """Prefix rules over canonical paths; a lookup costs O(path depth), whatever the
    number of rules, because it walks the path's own prefixes through a dict."""

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
        """The first rule whose prefix covers canonical `path`, whose methods allow
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
            key = path if end < 0 else path[:end]
            rules = by_prefix.get(key)
            if rules:
                for rule in rules:
                    if (rule.methods is None or method in rule.methods) and (
                            accept is None or accept(rule.target)):
                        return rule
            if end < 0 or key not in stems:
                return None
