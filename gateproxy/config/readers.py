"""The building blocks of configuration loading: problems, the layered merge, and the
typed readers every setting is read with.

A reader takes the loader, the key's path and the raw value, and returns the value in
its type, or None after recording a problem that names the key and what is wrong; so all
problems are found in one pass, whatever they are.
"""

from __future__ import annotations

import copy
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yarl import URL

from gateproxy.core import paths
from gateproxy.core.model import GatedRoute, redact_url

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_GRPC_METHOD = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong (or, for an ignored key, what was left out) where."""

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found; str() gives one line per problem."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


Path = tuple[str | int, ...]


def key_name(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(document)"


def camel_case(name: str) -> str:
    head, *rest = re.split(r"[-_\s]+", name)
    return head.lower() + "".join(p[:1].upper() + p[1:].lower() for p in rest)



class Loader:
    """Merges the layers while remembering where each value came from."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.ignored: list[Problem] = []  # retired keys: warnings, not problems
        self.origins: dict[Path, str] = {}

    def problem(self, path: Path, message: str, source: str | None = None) -> None:
        self.problems.append(Problem(source or self.origin(path), key_name(path), message))

    def ignore(self, path: Path, message: str, source: str) -> None:
        """A key `source` sets that has no effect: the configuration still loads."""
        self.ignored.append(Problem(source, key_name(path), message))

    def origin(self, path: Path) -> str:
        # The most specific layer that set this key or one of its parents.
        for i in range(len(path), -1, -1):
            found = self.origins.get(path[:i])
            if found:
                return found
        return "defaults"

    def merge(self, base: Any, over: Any, path: Path, source: str, schema: Any,
              entry: dict[str, Any]) -> Any:
        """Overlay `over` (from `source`) on `base`, rejecting keys `schema` does not know;
        `dependencies` is a list whose items are overlaid on `entry`."""
        if isinstance(schema, dict):
            if not isinstance(over, dict):
                self.problem(path, f"must be a mapping, got {kind(over)}", source)
                return base
            merged = dict(base) if isinstance(base, dict) else {}
            for key, value in over.items():
                if not isinstance(key, str) or key not in schema:
                    known = ", ".join(sorted(schema))
                    self.problem((*path, key_text(key)), f"unknown key (known keys: {known})",
                                 source)
                    continue
                merged[key] = self.merge(merged.get(key), value, (*path, key), source,
                                         schema[key], entry)
            return merged
        if path == ("dependencies",):
            if not isinstance(over, list):
                self.problem(path, f"must be a list, got {kind(over)}", source)
                return base
            # The list replaces the one before it, and the origins of its entries go too:
            # a problem in this list is this source's, not the defaults'.
            for key in [k for k in self.origins if k[:1] == path]:
                del self.origins[key]
            self.origins[path] = source
            return [
                self.merge(copy.deepcopy(entry), item, (*path, i), source, entry, entry)
                for i, item in enumerate(over)
            ]
        self.origins[path] = source
        return over


def kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)



class _ShortRepr(reprlib.Repr):
    """repr() for problem messages: bounded in size and time whatever the document holds
    (YAML aliases can make a list of billions of items out of a few lines), and safe for
    integers past the 4300 digits Python refuses to print."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 80
        self.maxlevel, self.maxlist, self.maxdict = 3, 5, 5

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<a {x.bit_length()}-bit number>"
        return repr(x)


show = _ShortRepr().repr


def key_text(key: Any) -> str:
    """A YAML key as it goes into a problem line: as written when it is plain text,
    quoted otherwise, so that a key holding a newline cannot break the one-line format."""
    if isinstance(key, str) and key and key.isprintable() and key.strip() == key and (
            ": " not in key):
        return key
    return show(key)



# --- typed readers: each returns the value or None after recording a problem -------------

Reader = Callable[[Loader, Path, Any], Any]


# No setting goes past this (in ms, some 31 000 years): a larger number is a typo, and one
# past 2**1024 would not even convert to a float.
_INT_CEILING = 10**15
# ASCII only: `\s` and `\d` would also take characters int() refuses or reads otherwise.
_INTEGER = re.compile(r"[ \t]*([+-]?[0-9]+)[ \t]*")


def integer(minimum: int, maximum: int | None = None) -> Reader:
    ceiling = _INT_CEILING if maximum is None else maximum

    def read(loader: Loader, path: Path, value: Any) -> int | None:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and (match := _INTEGER.fullmatch(value)):
            # int() refuses strings past 4300 digits: anything past 18 is out of range.
            text = match.group(1)
            digits = len(text.lstrip("+-"))
            number = int(text) if digits <= 18 else (-1 if "-" in text else 1) * 10**18
        if number is None:
            loader.problem(path, f"must be a whole number, got {show(value)}")
            return None
        if number < minimum or number > ceiling:
            bound = (f"between {minimum} and {maximum}" if maximum is not None
                     else f"at least {minimum}" if number < minimum else f"at most {ceiling}")
            loader.problem(path, f"must be {bound}, got {show(value)}")
            return None
        return number

    return read


def boolean(loader: Loader, path: Path, value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    loader.problem(path, f"must be a boolean (true/false/1/0/yes/no), got {show(value)}")
    return None


def string(loader: Loader, path: Path, value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    loader.problem(path, f"must be a non-empty string, got {show(value)}")
    return None


def http_url(loader: Loader, path: Path, value: Any) -> str | None:
    text = string(loader, path, value)
    if text is None:
        return None
    try:
        url = URL(text)
    except ValueError as exc:
        loader.problem(path, f"is not a valid URL ({exc}): {show(redact_url(text))}")
        return None
    if url.scheme not in ("http", "https"):
        loader.problem(path,
                       f"must be an http:// or https:// URL, got {show(redact_url(text))}")
        return None
    if not url.host:
        loader.problem(path, f"has no host: {show(redact_url(text))}")
        return None
    if url.query_string or url.fragment:
        loader.problem(path, "must not have a query or fragment")
        return None
    return text.rstrip("/")


def abs_path(loader: Loader, path: Path, value: Any) -> str | None:
    text = string(loader, path, value)
    if text is None:
        return None
    if not text.startswith("/") or any(c in text for c in " #\\") or any(
        ord(c) < 0x20 or ord(c) == 0x7F for c in text
    ):
        loader.problem(path, f"must be a path starting with '/', got {show(text)}")
        return None
    return text


def choice(*choices: str, upper: bool = False) -> Reader:
    def read(loader: Loader, path: Path, value: Any) -> str | None:
        text = value.strip() if isinstance(value, str) else None
        if text is not None and upper:
            text = text.upper()
        elif text is not None:
            text = text.lower()
        if text not in choices:
            loader.problem(path, f"must be one of {', '.join(choices)}, got {show(value)}")
            return None
        return text

    return read



def grpc_url(loader: Loader, path: Path, value: Any) -> str | None:
    text = string(loader, path, value)
    if text is None:
        return None
    shown = show(redact_url(text))
    try:
        url = URL(text.rstrip("/"))
        port = url.explicit_port
    except ValueError:
        loader.problem(path, f"is not a valid URL: {shown}")
        return None
    if url.scheme not in ("grpc", "grpcs"):
        loader.problem(path, f"must be a grpc:// or grpcs:// URL (probe: grpc), got {shown}")
    elif not url.host or port is None:
        loader.problem(path, f"must name a host and a port (grpc://host:50051), got {shown}")
    elif url.user is not None or url.password is not None:
        loader.problem(path, f"must not carry credentials (gRPC sends none), got {shown}")
    elif url.raw_path not in ("", "/") or url.query_string or url.fragment:
        loader.problem(path, f"must be only scheme, host and port, got {shown}")
    else:
        return f"{url.scheme}://{url.raw_authority}"
    return None


def grpc_method(loader: Loader, path: Path, value: Any) -> str | None:
    text = string(loader, path, value)
    if text is not None and not _GRPC_METHOD.fullmatch(text):
        loader.problem(path, "must be a full gRPC method path (/package.Service/Method), "
                             f"got {show(text)}")
        return None
    return text



def gated_routes(loader: Loader, path: Path, value: Any) -> tuple[GatedRoute, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        loader.problem(path, f"must be a list, got {kind(value)}")
        return ()
    out = []
    for i, item in enumerate(value):
        item_path = (*path, i)
        methods: frozenset[str] | None = None
        if isinstance(item, dict):
            unknown = set(item) - {"prefix", "methods"}
            for key in sorted(map(key_text, unknown)):
                loader.problem((*item_path, key), "unknown key (known keys: methods, prefix)")
            prefix = abs_path(loader, (*item_path, "prefix"), item.get("prefix"))
            raw_methods = item.get("methods")
            if raw_methods is not None:
                methods = _methods(loader, raw_methods, (*item_path, "methods"))
        else:
            prefix = abs_path(loader, item_path, item)
        if prefix is None:
            continue
        try:
            canonical = paths.canonical_prefix(prefix)
        except paths.BadPath as exc:
            loader.problem(item_path, f"is not a usable prefix: {exc}")
            continue
        out.append(GatedRoute(prefix=canonical, methods=methods))
    return tuple(out)


def _methods(loader: Loader, value: Any, path: Path) -> frozenset[str] | None:
    if not isinstance(value, list) or not value:
        loader.problem(path, "must be a non-empty list of HTTP methods")
        return None
    methods = set()
    for m in value:
        if not isinstance(m, str) or m.upper() not in HTTP_METHODS:
            loader.problem(path, f"{show(m)} is not an HTTP method")
            continue
        methods.add(m.upper())
    # Routers answer HEAD with the GET handler, so a gated GET gates HEAD too.
    if "GET" in methods:
        methods.add("HEAD")
    return frozenset(methods)





def optional(read: Reader) -> Reader:
    """`read`, except that null (or a key left out) is None, not a problem."""

    def read_optional(loader: Loader, path: Path, value: Any) -> Any:
        return None if value is None else read(loader, path, value)

    return read_optional


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def name(loader: Loader, path: Path, value: Any) -> str | None:
    text = string(loader, path, value)
    if text is not None and not _NAME.fullmatch(text):
        loader.problem(path, f"must be letters, digits, '-', '_' or '.', got {show(text)}")
        return None
    return text


def string_set(loader: Loader, path: Path, value: Any) -> frozenset[str] | None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        loader.problem(path, f"must be a list of strings, got {show(value)}")
        return None
    return frozenset(value)


def status_codes(loader: Loader, path: Path, value: Any) -> frozenset[int] | None:
    """A list of HTTP status codes (100-599)."""
    if not isinstance(value, list):
        loader.problem(path, f"must be a list of HTTP status codes, got {kind(value)}")
        return None
    read = integer(100, 599)
    codes = [read(loader, (*path, i), item) for i, item in enumerate(value)]
    return None if None in codes else frozenset(c for c in codes if c is not None)


def secret(loader: Loader, path: Path, value: Any) -> str | None:
    """A secret from the environment: surrounding blanks dropped, a blank one is none."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def workers(loader: Loader, path: Path, value: Any) -> int | str | None:
    """A number of worker processes (1 to 64), or `auto`."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    count: int | None = integer(1, 64)(loader, path, value)
    return count
