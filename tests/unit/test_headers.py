"""The header rules of forwarding (gateproxy/http_rules/headers.py), as pure functions:
one test per row of docs/headers.md's tables that these functions carry out.

Rows other layers carry out are tested there: `Host` first, `Content-Length: 0`,
trailers, the fragment, the request line and the framing (tests/integration/
test_differential.py and test_upstream_bytes.py, through a gateway); the proxy's own
`Connection`, `Date`, `Server` and `Content-Type` on the way back (the same, and
test_own_answers.py).
"""

from __future__ import annotations

import pytest

from gateproxy.http_rules.headers import (
    SWITCH,
    BadField,
    forwarded_fields,
    response_fields,
    via,
)

PEER = "203.0.113.7"
HOP_BY_HOP = ("Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade",
              "Proxy-Authorization", "Proxy-Authenticate")
ADDED = ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Via"]

Raw = tuple[tuple[bytes, bytes], ...]


def raw(*lines: tuple[str, str]) -> Raw:
    return tuple((name.encode(), value.encode()) for name, value in lines)


def lowered(lines: Raw) -> list[bytes]:
    """What the core passes beside the lines: their names in lower case."""
    return [name.lower() for name, _ in lines]


def text(fields: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode(), value.decode()) for name, value in fields]


def forwarded(lines: Raw, tls: bool = False) -> list[tuple[bytes, bytes]]:
    return forwarded_fields(lines, lowered(lines), PEER.encode(), tls)


def forward(*lines: tuple[str, str], tls: bool = False) -> list[tuple[str, str]]:
    return text(forwarded(raw(*lines), tls))


def answered(lines: Raw, keep: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    return response_fields(lines, lowered(lines), keep)[0]


def answer(*lines: tuple[str, str]) -> list[tuple[str, str]]:
    return text(answered(raw(*lines)))


def names(items: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in items]


# --- requests (client -> upstream) ------------------------------------------------------

@pytest.mark.parametrize("name", HOP_BY_HOP)
def test_request_hop_by_hop_headers_are_removed(name: str) -> None:
    value = "keep-alive" if name == "Connection" else "x"
    got = forward(("Host", "app.test"), (name, value), ("Accept", "*/*"))
    assert names(got) == ["Host", "Accept", *ADDED]


@pytest.mark.parametrize("spelling", ["keep-alive", "KEEP-ALIVE", "Keep-Alive"])
def test_hop_by_hop_names_match_in_any_case(spelling: str) -> None:
    got = forward(("Host", "app.test"), (spelling, "timeout=5"), ("X-A", "1"))
    assert names(got) == ["Host", "X-A", *ADDED]


def test_every_header_named_in_connection_is_removed() -> None:
    got = forward(("Host", "app.test"), ("Connection", "X-Foo, x-bar ,keep-alive"),
                  ("X-Foo", "1"), ("X-Bar", "2"), ("X-Baz", "3"))
    assert names(got) == ["Host", "X-Baz", *ADDED]


def test_a_client_cannot_remove_the_forwarded_headers_by_naming_them() -> None:
    """Connection's names go first: the client's own X-Forwarded-* lines are dropped, and
    ours are added after, from the connection's facts."""
    got = dict(forward(("Host", "app.test"),
                       ("Connection", "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, "
                                      "Via"),
                       ("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-Proto", "https"),
                       ("X-Forwarded-Host", "spoofed.test"), ("Via", "1.0 spoof")))
    assert got == {"Host": "app.test", "X-Forwarded-For": PEER, "X-Forwarded-Proto": "http",
                   "X-Forwarded-Host": "app.test", "Via": "1.1 gateproxy"}


def test_expect_is_removed() -> None:
    got = forward(("Host", "app.test"), ("Expect", "100-continue"), ("Content-Length", "5"))
    assert names(got) == ["Host", "Content-Length", *ADDED]


def test_transfer_encoding_is_removed() -> None:
    got = forward(("Host", "app.test"), ("Transfer-Encoding", "chunked"))
    assert names(got) == ["Host", *ADDED]


def test_x_forwarded_for_is_set_to_the_peer() -> None:
    assert dict(forward(("Host", "app.test")))["X-Forwarded-For"] == PEER


def test_x_forwarded_for_lines_become_one_with_the_peer_appended_at_the_end() -> None:
    got = forward(("X-Forwarded-For", "198.51.100.1, 198.51.100.2"), ("Host", "app.test"),
                  ("x-forwarded-for", "198.51.100.3"), ("Accept", "*/*"))
    assert [value for name, value in got if name.lower() == "x-forwarded-for"] == [
        f"198.51.100.1, 198.51.100.2, 198.51.100.3, {PEER}"]
    assert names(got) == ["Host", "Accept", *ADDED], "moved to the end of the block"


@pytest.mark.parametrize(("tls", "proto"), [(False, "http"), (True, "https")])
def test_x_forwarded_proto_is_set_when_absent(tls: bool, proto: str) -> None:
    assert dict(forward(("Host", "app.test"), tls=tls))["X-Forwarded-Proto"] == proto


def test_x_forwarded_proto_is_kept_as_sent() -> None:
    got = forward(("X-Forwarded-Proto", "https"), ("Host", "app.test"))
    assert [v for k, v in got if k == "X-Forwarded-Proto"] == ["https"]
    assert names(got)[0] == "X-Forwarded-Proto", "in its place"


def test_x_forwarded_host_is_the_host_when_absent() -> None:
    assert dict(forward(("Host", "app.test:3010")))["X-Forwarded-Host"] == "app.test:3010"


def test_x_forwarded_host_is_kept_as_sent() -> None:
    got = forward(("Host", "internal:3010"), ("X-Forwarded-Host", "public.example"))
    assert [v for k, v in got if k == "X-Forwarded-Host"] == ["public.example"]


def test_no_host_no_x_forwarded_host() -> None:
    """An HTTP/1.0 request without Host: the upstream client supplies one later, and there
    is nothing to copy."""
    assert names(forward(("Accept", "*/*"))) == [
        "Accept", "X-Forwarded-For", "X-Forwarded-Proto", "Via"]


def test_via_is_appended_and_several_lines_become_one_at_the_end() -> None:
    got = forward(("Via", "1.0 edge"), ("Host", "app.test"), ("via", "1.1 lb"))
    assert [value for name, value in got if name.lower() == "via"] == [
        "1.0 edge, 1.1 lb, 1.1 gateproxy"]
    assert names(got)[-1] == "Via"


def test_a_name_spelled_in_several_cases_keeps_every_value_in_the_first_spelling() -> None:
    got = forward(("X-A", "1"), ("Host", "app.test"), ("x-a", "2"), ("X-a", "3"))
    assert [(k, v) for k, v in got if k.lower() == "x-a"] == [("X-A", "1"), ("X-A", "2"),
                                                              ("X-A", "3")]


def test_order_is_the_clients_with_the_added_lines_last_in_the_documented_order() -> None:
    got = forward(("User-Agent", "t"), ("Host", "app.test"), ("Accept", "*/*"),
                  ("Cookie", "a=1"), ("Cookie", "b=2"))
    assert got == [("User-Agent", "t"), ("Host", "app.test"), ("Accept", "*/*"),
                   ("Cookie", "a=1"), ("Cookie", "b=2"), ("X-Forwarded-For", PEER),
                   ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "app.test"),
                   ("Via", "1.1 gateproxy")]


@pytest.mark.parametrize("value", [b"caf\xe9", b"\x85\x93\xa0", b"\xff", b"ok\xc3"],
                         ids=["latin-1", "cp1252", "ff", "cut-utf-8"])
def test_a_value_that_is_not_utf_8_is_refused(value: bytes) -> None:
    with pytest.raises(BadField):
        forwarded(((b"Host", b"app.test"), (b"X-Name", value)))


def test_a_name_that_is_not_utf_8_is_refused() -> None:
    with pytest.raises(BadField):
        forwarded(((b"Host", b"app.test"), (b"X-\xe9", b"1")))


def test_utf_8_and_ascii_pass_byte_for_byte() -> None:
    value = "Zoë, 東京, ☃ and a\ttab"
    got = dict(forwarded(((b"Host", b"app.test"), (b"X-Name", value.encode()))))
    assert got[b"X-Name"] == value.encode()


def test_a_websocket_handshake_goes_as_the_client_wrote_it() -> None:
    got = forward(("Host", "app.test"), ("Sec-WebSocket-Key", "k"), ("X-Keep", "1"))
    assert names(got) == ["Host", "Sec-WebSocket-Key", "X-Keep", *ADDED]


# --- responses (upstream -> client) ------------------------------------------------------

@pytest.mark.parametrize("name", HOP_BY_HOP)
def test_response_hop_by_hop_headers_are_removed(name: str) -> None:
    value = "close" if name == "Connection" else "x"
    got = answer(("Content-Type", "text/plain"), (name, value), ("Content-Length", "2"))
    assert got == [("Content-Type", "text/plain"), ("Content-Length", "2"),
                   ("Via", "1.1 gateproxy")]


def test_headers_named_in_the_upstreams_connection_are_removed() -> None:
    got = answer(("Connection", "X-Private, keep-alive"), ("X-Private", "secret"),
                 ("Keep-Alive", "timeout=5"), ("X-Public", "yes"))
    assert names(got) == ["X-Public", "Via"]


def test_headers_named_in_any_of_several_connection_lines_are_removed() -> None:
    got = answer(("Connection", "X-One"), ("Connection", "X-Two"), ("X-One", "1"),
                 ("X-Two", "2"), ("X-Public", "yes"))
    assert names(got) == ["X-Public", "Via"]


@pytest.mark.parametrize("coding", ["chunked", "gzip, chunked"])
def test_transfer_encoding_leaves_a_chunked_placeholder_in_its_place(coding: str) -> None:
    """aiohttp writes its own framing header there, or nothing (docs/headers.md)."""
    got = answer(("Content-Type", "text/plain"), ("Transfer-Encoding", coding),
                 ("X-After", "1"))
    assert got == [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked"),
                   ("X-After", "1"), ("Via", "1.1 gateproxy")]


def test_content_length_date_server_and_content_type_are_kept_as_sent() -> None:
    lines = (("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("Server", "node"),
             ("Content-Type", "application/json"), ("Content-Length", "17"))
    assert answer(*lines) == [*lines, ("Via", "1.1 gateproxy")]


def test_nothing_is_added_that_the_upstream_did_not_send() -> None:
    assert answer(("X-Only", "1")) == [("X-Only", "1"), ("Via", "1.1 gateproxy")]


def test_response_via_is_appended_and_several_lines_become_one_at_the_end() -> None:
    got = answer(("Via", "1.1 app"), ("X-A", "1"), ("VIA", "1.0 cache"))
    assert got == [("X-A", "1"), ("Via", "1.1 app, 1.0 cache, 1.1 gateproxy")]


def test_repeated_headers_are_kept_line_by_line_in_order_unmerged() -> None:
    lines = (("Set-Cookie", "a=1; Path=/"), ("X-Repeated", "one"),
             ("Set-Cookie", "b=2, c=3; Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
             ("X-Repeated", "two"), ("set-cookie", "d=4"))
    assert answer(*lines) == [*lines, ("Via", "1.1 gateproxy")]


def test_response_bytes_that_are_not_utf_8_pass_as_their_latin_1_reading() -> None:
    got = dict(answered(((b"X-Name", b"caf\xe9"), (b"X-Utf8", "café".encode()))))
    assert got[b"X-Name"] == "café".encode(), "re-encoded, not refused"
    assert got[b"X-Utf8"] == "café".encode()


def test_a_101_keeps_its_connection_and_upgrade_lines() -> None:
    got = text(answered(raw(("Upgrade", "websocket"), ("Connection", "Upgrade"),
                            ("Sec-WebSocket-Accept", "k"), ("Keep-Alive", "5")), SWITCH))
    assert got == [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                   ("Sec-WebSocket-Accept", "k"), ("Via", "1.1 gateproxy")]


# --- via ----------------------------------------------------------------------------------

def test_via_is_ours_when_there_is_none() -> None:
    assert via([]) == (b"Via", b"1.1 gateproxy")


def test_via_merges_every_line_into_one_with_ours_last() -> None:
    assert via([b"1.0 a", b"1.1 b"]) == (b"Via", b"1.0 a, 1.1 b, 1.1 gateproxy")
