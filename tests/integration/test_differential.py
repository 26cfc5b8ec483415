"""The differential test: every request of a corpus goes once straight to the stand-in
upstream and once through a real gateway, and the two answers must be the same.

"The same" is byte for byte (status line, header lines in order and case, body bytes,
framing), except for what docs/headers.md lists: the `Via` the proxy appends, and the
`Date` value (a clock reading). What the upstream itself saw is compared as well (the
`/echo` answers), against a model of exactly the request changes docs/headers.md lists.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import brotli  # type: ignore[import-untyped]
import pytest
from aiohttp import WSMsgType

from gateproxy.demo.standins import StandIn
from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app
from tests.support.rawclient import Exchange, exchange

HOST = "app.internal:3010"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "proxy-authorization", "proxy-authenticate",
              "expect"}
BODYLESS_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}
# Statuses the corpus must have the upstream answer, so that each is compared.
COVERED_STATUSES = frozenset({200, 201, 204, 206, 301, 304, 400, 404, 500})


@dataclass
class Case:
    name: str
    head: bytes  # request line and headers, without the final blank line
    body: bytes = b""
    parts: list[bytes] = field(default_factory=list)  # written one at a time after head

    def request(self) -> bytes:
        return self.head + b"\r\n\r\n" + self.body


def req(method: str, target: str, *headers: str, body: bytes = b"", version: str = "1.1",
        length: bool = True, host: bool = True) -> Case:
    lines = [f"{method} {target} HTTP/{version}"]
    if host:
        lines.append(f"Host: {HOST}")
    lines.extend(headers)
    if body and length:
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines).encode("latin-1")
    return Case(f"{method} {target} {' | '.join(headers)}"[:120], head, body)


def chunked(method: str, target: str, pieces: list[bytes], *headers: str) -> Case:
    case = req(method, target, "Transfer-Encoding: chunked", *headers)
    encoded = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p] + [b"0\r\n\r\n"]
    case.parts = encoded
    case.name = f"{method} {target} chunked x{len(pieces)}"
    return case


def corpus() -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND",
               "MKCOL", "REPORT", "PURGE"]
    # Every method, with and without a body, on the echo endpoint.
    for method in methods:
        add(req(method, "/echo"))
        add(req(method, f"/echo/{method.lower()}?x=1", body=b'{"k": "v"}',
                ) if method not in ("HEAD", "TRACE") else req(method, "/echo/x?y=2"))
    add(req("POST", "/echo", "Content-Length: 0"))
    add(req("PUT", "/echo", "Content-Type: application/json", body=b"{}"))
    add(req("DELETE", "/echo?status=204"))
    # Query strings and paths with odd encodings, exactly as written. (Paths not in normal
    # form, such as `/a//b` or `/%41`, are forwarded in normal form: test_hostile_paths.)
    for target in ["/echo?a=%20b&c=%zz&d=%E2%9C%93&e=a+b&&f==&g", "/echo?q=%2F%3F%23%25",
                   "/echo/~user/AB?%61=1", "/echo/a%2Fb/c%5Cd", "/echo/;jsessionid=1?x",
                   "/echo/.well-known/..x", "/echo?empty=", "/echo?",
                   "/echo/%20space%20/", "/echo?x=1&x=2&x=3", "/echo/UPPER/Case",
                   "/echo?json=%7B%22a%22%3A1%7D", "/echo/trailing/", "/echo?%00=nul-in-query",
                   "/echo/very-long/" + "seg/" * 200, "/echo?" + "k=v&" * 500,
                   "http://app.internal:3010/echo/absolute?form=1"]:
        add(req("GET", target))
    # Headers: repeated, odd case, odd values, forwarding headers, hop-by-hop ones.
    header_sets = [
        ("X-Custom: one", "X-Custom: two", "x-custom: three"),
        ("Cookie: a=1", "Cookie: b=2"),
        ("Cookie: session=abc; theme=dark", "Authorization: Bearer t0k3n"),
        ("X-Forwarded-For: 203.0.113.7",),
        ("X-Forwarded-For: 203.0.113.7", "X-Forwarded-For: 198.51.100.1"),
        ("X-Forwarded-Proto: https", "X-Forwarded-Host: public.example"),
        ("Via: 1.0 edge",),
        ("Connection: keep-alive, X-Drop-Me", "X-Drop-Me: gone", "X-Keep: kept"),
        ("Connection: X-Forwarded-For", "X-Forwarded-For: 192.0.2.1"),
        ("Keep-Alive: timeout=5", "TE: trailers", "Proxy-Authorization: Basic eA=="),
        ("Accept-Encoding: gzip, br", "Accept: text/html;q=0.9, */*;q=0.1"),
        ("User-Agent: curl/8.0", "Accept-Language: fr-CH, fr;q=0.9"),
        ("X-Empty:",),
        ("X-Spaces:    padded value   ",),
        ("X-Utf8: caf\xc3\xa9 \xe2\x9c\x93",),
        ("Origin: https://ui.example", "Referer: https://ui.example/page"),
        ("If-None-Match: \"x\"", "If-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT"),
        ("Cache-Control: no-cache", "Pragma: no-cache"),
        ("X-Long: " + "v" * 4000,),
        ("Content-Type: text/plain; charset=utf-8",),
    ]
    for headers in header_sets:
        add(req("GET", "/echo", *headers))
        add(req("POST", "/echo/h", *headers, body=b"payload"))
    add(req("GET", "/echo", "Connection: close"))
    add(req("GET", "/echo", version="1.0", host=False))
    add(req("GET", "/echo", "Connection: keep-alive", version="1.0"))
    add(req("GET", "/bytes/100", version="1.0"))
    add(req("GET", "/chunked/5000", version="1.0"))
    # Bodies: empty, binary, large, chunked in odd pieces, 100-continue.
    add(req("POST", "/echo", body=bytes(range(256)) * 8))
    add(req("PUT", "/echo", body=upstream_app.pattern(3 * 1024 * 1024)))
    add(req("POST", "/echo", "Expect: 100-continue", body=b"after continue"))
    add(chunked("POST", "/echo", [b"a", b"bc", b"def" * 1000]))
    add(chunked("PUT", "/echo", [upstream_app.pattern(70000), b"tail"]))
    add(chunked("POST", "/echo", []))
    add(chunked("PATCH", "/echo", [b"x" * n for n in (1, 15, 16, 17, 255, 4096)]))
    add(chunked("POST", "/echo", [b"z" * 1000] * 40, "Expect: 100-continue"))
    # Statuses, redirects (never followed), custom reasons.
    for code in (200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404,
                 409, 410, 418, 429, 500, 502, 503):
        add(req("GET", f"/status/{code}"))
    add(req("HEAD", "/status/200"))
    add(req("POST", "/status/201", body=b"created?"))
    add(req("DELETE", "/status/204"))
    add(req("GET", "/echo?status=404"))
    add(req("POST", "/echo?status=500", body=b"oops"))
    add(req("GET", "/reason"))
    add(req("GET", "/does/not/exist"))
    # Downloads: known length, chunked, empty.
    for size in (0, 1, 1000, 65536, 65537, 1_000_000, 4_000_000):
        add(req("GET", f"/bytes/{size}"))
    for size, piece in ((0, 1), (10, 1), (100_000, 7), (3_000_000, 65536)):
        add(req("GET", f"/chunked/{size}?piece={piece}"))
    add(req("HEAD", "/bytes/1000"))
    add(req("HEAD", "/chunked/1000"))
    # Compressed bodies pass untouched, whatever the client accepts.
    for coding in ("gzip", "br", "deflate"):
        add(req("GET", f"/encoded/{coding}", f"Accept-Encoding: {coding}"))
        add(req("GET", f"/encoded/{coding}"))
        add(req("HEAD", f"/encoded/{coding}", "Accept-Encoding: gzip, br"))
    add(req("GET", "/encoded-stream", "Accept-Encoding: gzip"))
    add(req("GET", "/echo", "Content-Encoding: gzip", body=gzip.compress(b"up" * 500, mtime=0)))
    # Cookies, conditional requests, ranges.
    add(req("GET", "/cookies"))
    add(req("HEAD", "/cookies"))
    add(req("GET", "/conditional"))
    add(req("GET", "/conditional", f"If-None-Match: {upstream_app.ETAG}"))
    for spec in ("bytes=0-99", "bytes=100-", "bytes=-500", "bytes=1048000-2000000",
                 "bytes=5000000-", "bytes=0-0", "bytes=0-1,5-6", "items=0-1"):
        add(req("GET", "/range", f"Range: {spec}"))
    add(req("GET", "/range", "Range: bytes=10-20", f"If-Range: {upstream_app.ETAG}"))
    add(req("HEAD", "/range"))
    # Long-polling (Socket.IO) and Server-Sent Events.
    add(req("GET", "/socket.io/?EIO=4&transport=polling&t=N8hyd6w&wait=150"))
    add(req("POST", "/socket.io/?EIO=4&transport=polling&sid=abc&wait=50",
            "Content-Type: text/plain;charset=UTF-8", body=b'40{"token":"t"}'))
    add(req("GET", "/sse?count=5&interval=0.02", "Accept: text/event-stream"))
    add(req("GET", "/sse?count=1&interval=0", "Accept: text/event-stream",
            "Last-Event-ID: 4"))
    # What a Node upstream sends: no Server, no Content-Type; hop-by-hop response headers.
    add(req("GET", "/bare/length"))
    add(req("GET", "/bare/stream"))
    add(req("HEAD", "/bare/length"))
    add(req("GET", "/hop"))
    return cases


# --- what the upstream saw: the documented request changes, as a model ------------------

def _tokens(values: list[str]) -> set[str]:
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def expected_upstream_view(direct: dict[str, Any], method: str) -> dict[str, Any]:
    """What the upstream sees through the proxy, from what it saw directly, applying
    exactly the request changes listed in docs/headers.md."""
    headers: list[list[str]] = direct["headers"]
    drop = HOP_BY_HOP | _tokens([v for k, v in headers if k.lower() == "connection"])
    chunked = any(k.lower() == "transfer-encoding" for k, _ in headers)
    spelling: dict[str, str] = {}
    kept = [[spelling.setdefault(k.lower(), k), v] for k, v in headers
            if k.lower() not in drop]
    host = [h for h in kept if h[0].lower() == "host"]
    rest = [h for h in kept if h[0].lower() != "host"]
    xff = [v for k, v in rest if k.lower() == "x-forwarded-for"]
    rest = [h for h in rest if h[0].lower() != "x-forwarded-for"]
    rest.append(["X-Forwarded-For", ", ".join([*xff, "127.0.0.1"])])
    names = {k.lower() for k, _ in rest}
    if "x-forwarded-proto" not in names:
        rest.append(["X-Forwarded-Proto", "http"])
    if "x-forwarded-host" not in names and host:
        rest.append(["X-Forwarded-Host", host[0][1]])
    via = [v for k, v in rest if k.lower() == "via"]
    rest = [h for h in rest if h[0].lower() != "via"]
    rest.append(["Via", ", ".join([*via, "1.1 gateproxy"])])
    if chunked:
        rest.append(["Transfer-Encoding", "chunked"])
    elif method not in BODYLESS_METHODS and "content-length" not in names:
        rest.append(["Content-Length", "0"])
    if not host:
        rest.insert(0, ["Host", "<upstream>"])
    target = direct["target"]
    if target.startswith("http://"):
        target = target[target.index("/", 7):]
    if target.endswith("?") and target.count("?") == 1:
        target = target[:-1]  # yarl cannot represent an empty query
    return {**direct, "target": target, "version": "1.1", "headers": host + rest}


def differences(case: Case, direct: Exchange, proxied: Exchange) -> list[str]:
    problems: list[str] = []
    # The proxy answers as the HTTP/1.1 server it is, whatever version the client used
    # (RFC 9110 section 2.5); docs/headers.md.
    direct_status = re.sub(r"^HTTP/1\.0 ", "HTTP/1.1 ", direct.status_line)
    if direct_status != proxied.status_line:
        problems.append(f"status {direct.status_line!r} != {proxied.status_line!r}")
    if direct.interim != proxied.interim:
        problems.append(f"interim {direct.interim} != {proxied.interim}")
    if direct.framing != proxied.framing:
        problems.append(f"framing {direct.framing} != {proxied.framing}")
    via = proxied.all("Via")
    if not via or not via[-1].endswith("1.1 gateproxy"):
        problems.append(f"no Via added: {via}")
    if proxied.header("Content-Length") is not None and proxied.header(
            "Transfer-Encoding") is not None:
        problems.append("Content-Length together with Transfer-Encoding")
    for value in proxied.all("Connection"):
        if value not in ("close", "keep-alive"):
            problems.append(f"an upstream Connection header went through: {value}")
    d_headers = _comparable(expected_response_headers(direct.headers))
    p_headers = _comparable([(k, v) for k, v in proxied.headers
                             if k.lower() not in ("via", "connection")])
    direct_via = direct.all("Via")
    if direct_via:
        p_headers.append(("Via", ", ".join(direct_via)))
        if via[-1] != f"{', '.join(direct_via)}, 1.1 gateproxy":
            problems.append(f"Via not appended: {via}")
    seen_direct = _echo(direct)
    if case.head.startswith(b"HEAD /echo"):
        # Its Content-Length is that of the GET answer, which describes the request.
        d_headers = [(k, "<n>" if k.lower() == "content-length" else v) for k, v in d_headers]
        p_headers = [(k, "<n>" if k.lower() == "content-length" else v) for k, v in p_headers]
    if seen_direct is not None:
        # The bodies describe two different requests; their lengths differ with them.
        d_headers = [(k, "<n>" if k.lower() == "content-length" else v) for k, v in d_headers]
        p_headers = [(k, "<n>" if k.lower() == "content-length" else v) for k, v in p_headers]
        seen_proxied = _echo(proxied)
        method = case.head.split(b" ", 1)[0].decode()
        expected = expected_upstream_view(seen_direct, method)
        if seen_proxied is not None:
            for h in seen_proxied["headers"]:
                if h[0].lower() == "host" and not any(
                        k.lower() == "host" for k, _ in seen_direct["headers"]):
                    h[1] = "<upstream>"
        if expected != seen_proxied:
            problems.append(f"upstream saw {seen_proxied}\n   expected {expected}")
        if proxied.header("Content-Length") != str(len(proxied.body)):
            problems.append("proxied Content-Length does not match the body")
    elif direct.body != proxied.body:
        problems.append(f"body {len(direct.body)} bytes != {len(proxied.body)} bytes")
    if sorted(d_headers) != sorted(p_headers):
        problems.append(f"headers {d_headers} != {p_headers}")
    elif d_headers != p_headers:
        problems.append(f"header order {d_headers} != {p_headers}")
    return problems


def expected_response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The direct answer's headers as docs/headers.md says the client gets them through
    the proxy (Via aside): hop-by-hop ones and those named in Connection dropped;
    Connection itself describes each hop, so it is compared on neither side."""
    drop = (HOP_BY_HOP - {"transfer-encoding"}) | _tokens(
        [v for k, v in headers if k.lower() == "connection"])
    return [(k, v) for k, v in headers if k.lower() not in drop]


def _comparable(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, "<date>" if k.lower() == "date" else v) for k, v in headers]


def _echo(answer: Exchange) -> dict[str, Any] | None:
    if answer.header("Content-Type") != "application/json" or not answer.body.startswith(
            b'{"method"'):
        return None
    seen: dict[str, Any] = json.loads(answer.body)
    return seen


# --- WebSocket conversations --------------------------------------------------------------

Transcript = list[Any]


async def conversation(session: aiohttp.ClientSession, base: str, script: list[Any],
                       query: str = "", protocols: tuple[str, ...] = ("chat",),
                       headers: dict[str, str] | None = None) -> Transcript:
    """Run `script` against ws `base`/ws and record what the client observed."""
    record: Transcript = []
    try:
        ws = await session.ws_connect(f"{base}/ws{query}", protocols=protocols,
                                      autoping=False, autoclose=False, headers=headers,
                                      max_msg_size=64 * 1024 * 1024)
    except aiohttp.WSServerHandshakeError as exc:
        hdrs_seen = [(k, v) for k, v in (exc.headers or {}).items()
                     if k.lower() not in ("date", "via", "content-length", "content-type",
                                          "connection")]
        return [("refused", exc.status, hdrs_seen)]
    async with ws:
        handshake = [(k.decode(), "<varies>" if k.lower() in (b"date", b"sec-websocket-accept")
                      else v.decode())
                     for k, v in ws._response.raw_headers if k.lower() != b"via"]
        record.append(("open", ws.protocol, handshake))
        record.append(_message(await ws.receive(timeout=5)))
        for step in script:
            kind, payload = step[0], step[1]
            if kind == "text":
                await ws.send_str(payload)
            elif kind == "bytes":
                await ws.send_bytes(payload)
            elif kind == "ping":
                await ws.ping(payload)
            elif kind == "pong":
                await ws.pong(payload)
            elif kind == "close":
                await ws.close(code=payload, message=step[2])
                record.append(("closed-by-client", ws.close_code))
                return record
            for _ in range(step[-1] if isinstance(step[-1], int) and kind != "close" else 0):
                record.append(_message(await ws.receive(timeout=5)))
        # Read until the upstream closes.
        for _ in range(100):
            msg = await ws.receive(timeout=5)
            record.append(_message(msg))
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
        await ws.close()
        record.append(("closed", ws.close_code))
    return record


async def _upstream_ending(transcript: Transcript) -> tuple[int | None, str] | None:
    """How the upstream saw the last session end (None: it never opened one)."""
    endings = upstream_app.WS_ENDINGS
    if transcript[0][0] == "refused":
        return None
    for _ in range(300):
        if endings:
            return endings.pop()
        await asyncio.sleep(0.01)
    return None


def _message(msg: aiohttp.WSMessage) -> tuple[Any, ...]:
    return (msg.type.name, msg.data, msg.extra)


def ws_corpus() -> list[tuple[str, dict[str, Any]]]:
    every_frame = [("text", "hello", 1), ("bytes", b"\x00\x01\xff", 1), ("ping", b"p1", 1),
                   ("text", "ping:from-server", 1), ("text", "pong:unsolicited", 1),
                   ("pong", b"unsolicited-from-client", 0), ("text", "big:200000", 1),
                   ("bytes", upstream_app.pattern(300_000), 1), ("text", "burst:50", 50),
                   ("text", "\u2713 unicode \U0001f600", 1), ("text", "", 1),
                   ("bytes", b"", 1)]
    return [
        ("every frame type, client closes 1000", {"script": [*every_frame,
                                                           ("close", 1000, b"")]}),
        ("client closes 4000 with a reason", {"script": [("text", "a", 1),
                                                        ("close", 4000, b"bye now")]}),
        ("client closes 1001", {"script": [("close", 1001, b"going")]}),
        ("upstream closes 4001 with a reason", {"script": [("text", "close:4001:done", 0)]}),
        ("upstream closes 1000", {"script": [("text", "x", 1), ("text", "close:1000:", 0)]}),
        ("upstream closes 1011", {"script": [("text", "close:1011:broken", 0)]}),
        ("upstream closes 3000", {"script": [("text", "close:3000:", 0)]}),
        ("query, cookie, origin, authorization", {
            "script": [("close", 1000, b"")], "query": "?room=a%20b&x=1",
            "headers": {"Cookie": "sid=42; theme=dark", "Origin": "https://ui.example",
                        "Authorization": "Bearer abc"}}),
        ("second subprotocol", {"script": [("close", 1000, b"")],
                                "protocols": ("nope", "superchat")}),
        ("no common subprotocol", {"script": [("close", 1000, b"")], "protocols": ("x",)}),
        ("no subprotocol", {"script": [("text", "t", 1), ("close", 1000, b"")],
                            "protocols": ()}),
        ("refused 403", {"script": [], "query": "?refuse=403"}),
        ("refused 401", {"script": [], "query": "?refuse=401"}),
        ("refused 404", {"script": [], "query": "?refuse=404"}),
        ("many pings", {"script": [("ping", f"{n}".encode(), 1) for n in range(20)]
                        + [("close", 1000, b"")]}),
    ]


# --- the test -----------------------------------------------------------------------------

@pytest.fixture
async def pair() -> AsyncIterator[tuple[StandIn, Gateway]]:
    """The upstream, and a gateway in front of it."""
    upstream = StandIn(upstream_app.app())
    await upstream.start()
    gateway = await upstream_app.start_gateway(upstream.url)
    try:
        yield upstream, gateway
    finally:
        await gateway.stop()
        await upstream.stop()


async def test_direct_and_proxied_answers_are_identical(
        pair: tuple[StandIn, Gateway]) -> None:
    upstream, gateway = pair
    cases = corpus()
    assert len(cases) >= 150, len(cases)
    identical, different = 0, []
    compared: set[int] = set()
    for case in cases:
        method = case.head.split(b" ", 1)[0].decode()
        direct = await exchange(upstream.port, case.request(), method, case.parts)
        proxied = await exchange(gateway.port, case.request(), method, case.parts)
        compared.add(direct.status)
        problems = differences(case, direct, proxied)
        if problems:
            different.append(f"{case.name}:\n  " + "\n  ".join(problems))
        else:
            identical += 1
    ws_identical, ws_different = 0, []
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for name, spec in ws_corpus():
            options = {k: v for k, v in spec.items() if k != "script"}
            upstream_app.WS_ENDINGS.clear()
            direct_t = await conversation(session, upstream.url, spec["script"], **options)
            direct_t.append(("upstream saw", await _upstream_ending(direct_t)))
            proxied_t = await conversation(session, f"http://127.0.0.1:{gateway.port}",
                                           spec["script"], **options)
            proxied_t.append(("upstream saw", await _upstream_ending(proxied_t)))
            if direct_t == proxied_t:
                ws_identical += 1
            else:
                ws_different.append(f"{name}:\n  direct  {direct_t}\n  proxied {proxied_t}")
    total_same = identical + ws_identical
    total_diff = len(different) + len(ws_different)
    print(f"\n{total_same} identical, {total_diff} different "
          f"({len(cases)} HTTP requests, {len(ws_corpus())} WebSocket conversations; "
          f"upstream client {type(gateway.upstream).__name__})")
    for problem in different + ws_different:
        print(problem[:3000])
    assert total_diff == 0
    # Answers of each of these statuses were compared, not only asked for.
    assert not COVERED_STATUSES - compared, sorted(COVERED_STATUSES - compared)
    # Every session has ended on both sides (the last one's connections close as it ends).
    for _ in range(300):
        if gateway.tunnels.open_count == 0:
            break
        await asyncio.sleep(0.01)
    assert gateway.tunnels.open_count == 0


def test_the_compressed_fixtures_are_really_compressed() -> None:
    # The pass-through cases mean nothing if the upstream sent plain text.
    assert gzip.decompress(upstream_app.GZIPPED) == upstream_app.TEXT
    assert brotli.decompress(upstream_app.BROTLI) == upstream_app.TEXT
    assert zlib.decompress(upstream_app.DEFLATED) == upstream_app.TEXT
    assert len(upstream_app.GZIPPED) < len(upstream_app.TEXT) // 4


async def test_corpus_covers_what_the_issue_lists() -> None:
    heads = b"\n".join(c.head for c in corpus())
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"):
        assert heads.count(method + b" ") >= 2
    for status in COVERED_STATUSES:
        assert f"/status/{status}".encode() in heads, status
    # 206 and 304 also as a client gets them: to a Range and to an If-None-Match.
    assert b"Range: bytes=" in heads and b"If-None-Match" in heads
    assert any(c.parts for c in corpus())
    assert b"/sse" in heads and b"transport=polling" in heads
    await asyncio.sleep(0)
