"""The header rules of forwarding, both ways (docs/headers.md lists them all), on the
header lines as llhttp gave them: (name, value) byte pairs, with their names in lower
case beside them.

Hop-by-hop headers (and those named in `Connection`) are dropped both ways,
`X-Forwarded-*` and `Via` are added; a request header that cannot reach the upstream
byte for byte is refused (`BadField`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from itertools import chain, compress
from operator import itemgetter, not_
from typing import Final

Field = tuple[bytes, bytes]

HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
    # The proxy has answered `Expect: 100-continue` for the client itself.
    b"expect",
})
SWITCH: Final = frozenset({b"connection", b"upgrade"})
VIA: Final = b"1.1 gateproxy"
# The request headers the proxy adds to or merges, besides Host.
_NOTED: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                           b"via"})


# The filters below are map/compress chains rather than comprehensions: they run per
# request, and this way no Python frame is made for them.
_VALUE: Final = itemgetter(1)


def values(raw: Sequence[Field], names: Sequence[bytes], name: bytes) -> list[bytes]:
    """Every value of the header `name` (lower case), in order."""
    return list(map(_VALUE, compress(raw, map(name.__eq__, names))))


def without(fields: Sequence[Field], names: Sequence[bytes], name: bytes
            ) -> tuple[list[Field], list[bytes]]:
    """The lines and their lower-case names, but those of `name`."""
    keep = list(map(name.__ne__, names))
    return list(compress(fields, keep)), list(compress(names, keep))


def _kept(raw: Sequence[Field], names: Sequence[bytes], drop: frozenset[bytes]
          ) -> tuple[list[Field], list[bytes]]:
    """The lines and their lower-case names, but those `drop` names."""
    if drop.isdisjoint(names):
        return list(raw), list(names)
    keep = list(map(not_, map(drop.__contains__, names)))
    return list(compress(raw, keep)), list(compress(names, keep))


def dropped(raw: Sequence[Field], names: Sequence[bytes]) -> frozenset[bytes]:
    """The hop-by-hop names, and those the `Connection` lines name (every line of them,
    as one list: RFC 9110 section 5.3)."""
    if b"connection" not in names:
        return HOP_BY_HOP
    return _dropped_by(b",".join(values(raw, names, b"connection")))


@functools.lru_cache(maxsize=256)
def _dropped_by(connection: bytes) -> frozenset[bytes]:
    # Cached: nearly every client sends one of a handful of values (`keep-alive`).
    return HOP_BY_HOP | {t.strip().lower() for t in connection.split(b",")}


def via(previous: list[bytes]) -> Field:
    """The one `Via` line: the ones before it merged, ours last."""
    return (b"Via", b", ".join((*previous, VIA)) if previous else VIA)


class BadField(ValueError):
    """A request header that cannot be forwarded byte for byte."""


def text(raw: bytes) -> bytes:
    """A response header name or value as the writer passes it: bytes that are not UTF-8
    travel as the UTF-8 of their Latin-1 reading (docs/headers.md)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1").encode("utf-8")
    return raw


@functools.lru_cache(maxsize=1024)
def client_address(peername: object) -> bytes:
    """The client's address as `X-Forwarded-For` carries it, read from the
    connection's peer name (b'' when unknown)."""
    if peername is None:
        return b""
    if isinstance(peername, list | tuple):
        return str(peername[0]).encode("latin-1")
    return str(peername).encode("latin-1")


def forwarded_fields(raw: Sequence[Field], names: Sequence[bytes], peer: bytes, tls: bool
                     ) -> list[Field]:
    """The header lines to send upstream, in the client's order, from the client's, its
    address and whether it came over TLS. BadField for a line that cannot go
    byte for byte. Hop-by-hop ones go first, so that a client cannot remove our
    X-Forwarded-* by naming them in `Connection`."""
    out, kept = _kept(raw, names, dropped(raw, names))
    if not b"".join(chain.from_iterable(out)).isascii():
        for part in chain.from_iterable(out):
            try:
                part.decode("utf-8")
            except UnicodeDecodeError:
                raise BadField("a request header has bytes that are not UTF-8") from None
    if len(set(kept)) < len(kept):
        # A name spelled in several cases (`X-A: 1`, `x-a: 2`) goes out spelled as its
        # first line, every value kept (docs/headers.md): what the upstream has always seen.
        spelling: dict[bytes, bytes] = {}
        out = [(spelling.setdefault(low, name), value)
               for (name, value), low in zip(out, kept, strict=True)]
    noted = _NOTED.intersection(kept)
    previous: dict[bytes, list[bytes]] = {}
    if noted:
        previous = {name: values(out, kept, name) for name in noted}
        for name in _MERGED.intersection(noted):
            out, kept = without(out, kept, name)
    forwarded_for = previous.get(b"x-forwarded-for")
    out.append((b"X-Forwarded-For", b", ".join((*forwarded_for, peer)) if forwarded_for
                else peer))
    if b"x-forwarded-proto" not in noted:
        out.append((b"X-Forwarded-Proto", b"https" if tls else b"http"))
    if b"x-forwarded-host" not in noted and b"host" in kept:
        out.append((b"X-Forwarded-Host", out[kept.index(b"host")][1]))
    out.append(via(previous.get(b"via", [])))
    return out


# Lines merged into one of the proxy's at the end: taken out where they were.
_MERGED: Final = frozenset({b"x-forwarded-for", b"via"})


def response_fields(raw: Sequence[Field], names: Sequence[bytes],
                    keep: frozenset[bytes] = frozenset()) -> tuple[list[Field], list[bytes]]:
    """An upstream answer's header lines for the client, and their names in lower case:
    hop-by-hop ones out (but those in `keep`), `Via` added; a `Transfer-Encoding` keeps
    its place as `chunked`, for the framing the planner writes there, or none."""
    drop = dropped(raw, names)
    if keep:
        drop = drop - keep
    out, kept = _kept(raw, names, drop)
    if b"transfer-encoding" in drop and b"transfer-encoding" in names:
        at = names.index(b"transfer-encoding")
        place = len(_kept(raw[:at], names[:at], drop)[1])
        out.insert(place, (raw[at][0], b"chunked"))
        kept.insert(place, b"transfer-encoding")
    previous: list[bytes] = []
    if b"via" in kept:
        previous = values(out, kept, b"via")
        out, kept = without(out, kept, b"via")
    if not b"".join(chain.from_iterable(out)).isascii():
        out = [(text(name), text(value)) for name, value in out]
    out.append(via(previous))
    kept.append(b"via")
    return out, kept

