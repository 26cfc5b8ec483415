"""Request smuggling and malformed HTTP, sent byte for byte over a raw socket.

Each case gets a 4xx or a closed connection from the proxy, and the upstream (a raw
socket server recording the exact bytes it receives) never sees an ambiguous request:
what it received parses under the strictest reading of RFC 9112, with one Host, one
framing header and nothing left over, and the request hidden in the case (`/smuggled`)
never appears as a request of its own.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from gateproxy import config, logs
from gateproxy.serve.gateway import Gateway
from tests.support.hostile_support import Ambiguous, RawUpstream, WireRequest
from tests.support.ports import free_port
from tests.support.processes import Proc, wait_live

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: platform.test\r\n\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    split: bool = False  # send the head, let the proxy start forwarding, then the rest


def _post(headers: bytes, body: bytes, target: bytes = b"/api/threads") -> bytes:
    return (b"POST " + target + b" HTTP/1.1\r\nHost: platform.test\r\n" + headers + b"\r\n"
            + body)


def _chunked(body: bytes) -> bytes:
    return _post(b"Transfer-Encoding: chunked\r\n", body)


def _get(headers: bytes, target: bytes = b"/api/threads") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + headers + b"\r\n"


CASES = [
    # Content-Length and Transfer-Encoding together, in both orders
    Case("cl_then_te", _post(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                             b"0\r\n\r\n" + SMUGGLED)),
    Case("te_then_cl", _post(b"Transfer-Encoding: chunked\r\nContent-Length: 60\r\n",
                             b"0\r\n\r\n" + SMUGGLED)),
    Case("cl_and_te_identity", _post(b"Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
                                     b"hello" + SMUGGLED)),
    # two Content-Lengths
    Case("two_cl_different", _post(b"Content-Length: 5\r\nContent-Length: 52\r\n",
                                   b"hello" + SMUGGLED)),
    Case("two_cl_same", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED)),
    Case("cl_list", _post(b"Content-Length: 5, 5\r\n", b"hello" + SMUGGLED)),
    Case("cl_plus_sign", _post(b"Content-Length: +5\r\n", b"hello" + SMUGGLED)),
    Case("cl_negative", _post(b"Content-Length: -1\r\n", b"hello" + SMUGGLED)),
    Case("cl_hex", _post(b"Content-Length: 0x5\r\n", b"hello" + SMUGGLED)),
    Case("cl_space_inside", _post(b"Content-Length: 5 0\r\n", b"hello" + SMUGGLED)),
    Case("cl_huge", _post(b"Content-Length: 99999999999999999999999\r\n", b"hello")),
    # Transfer-Encoding spelled in ways parsers disagree on
    Case("te_twice", _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                           b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    Case("te_chunked_then_identity", _post(b"Transfer-Encoding: chunked, identity\r\n",
                                           b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    Case("te_unknown", _post(b"Transfer-Encoding: xchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n")),
    Case("te_space_before_colon", _post(b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
                                        b"0\r\n\r\n" + SMUGGLED)),
    Case("te_vertical_tab", _post(b"Transfer-Encoding:\x0bchunked\r\n",
                                  b"0\r\n\r\n" + SMUGGLED)),
    Case("te_obs_fold", _post(b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n",
                              b"0\r\n\r\n" + SMUGGLED)),
    Case("te_in_http10", b"POST /api/threads HTTP/1.0\r\nHost: platform.test\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    # obs-fold, bare LF, bare CR
    Case("obs_fold", _get(b"Host: platform.test\r\nX-Folded: a\r\n b\r\n")),
    Case("obs_fold_tab", _get(b"Host: platform.test\r\nX-Folded: a\r\n\tb\r\n")),
    Case("bare_lf_everywhere", b"GET /api/threads HTTP/1.1\nHost: platform.test\n\n" + SMUGGLED),
    Case("bare_lf_in_header", _get(b"Host: platform.test\nX-A: 1\r\n")),
    Case("bare_lf_end_of_head", b"GET /api/threads HTTP/1.1\r\nHost: platform.test\r\n\n"
                                + SMUGGLED),
    Case("bare_cr_in_value", _get(b"Host: platform.test\r\nX-A: a\rb\r\n")),
    Case("bare_cr_line_end", _get(b"Host: platform.test\rX-A: b\r\n")),
    # NUL and control characters
    Case("nul_in_value", _get(b"Host: platform.test\r\nX-A: a\x00b\r\n")),
    Case("nul_in_name", _get(b"Host: platform.test\r\nX\x00A: b\r\n")),
    Case("soh_in_value", _get(b"Host: platform.test\r\nX-A: a\x01b\r\n")),
    Case("del_in_value", _get(b"Host: platform.test\r\nX-A: a\x7fb\r\n")),
    Case("esc_in_value", _get(b"Host: platform.test\r\nX-A: \x1b[31mred\r\n")),
    Case("space_in_name", _get(b"Host: platform.test\r\nX A: b\r\n")),
    Case("no_colon", _get(b"Host: platform.test\r\nX-A b\r\n")),
    Case("nul_in_target", _get(b"Host: platform.test\r\n", b"/api/th\x00reads")),
    Case("ctl_in_method", b"G\x01T /api/threads HTTP/1.1\r\nHost: platform.test\r\n\r\n"),
    # chunk sizes and chunk extensions
    Case("chunk_size_not_hex", _chunked(b"zz\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_size_negative", _chunked(b"-5\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_size_0x", _chunked(b"0x5\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_size_plus", _chunked(b"+5\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_size_leading_space", _chunked(b" 5\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_size_overflow", _chunked(b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_size_bare_lf", _chunked(b"5\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    Case("chunk_data_too_long", _chunked(b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    Case("chunk_data_no_crlf", _chunked(b"5\r\nhello0\r\n\r\n" + SMUGGLED)),
    Case("chunk_ext_lf", _chunked(b"5;ext=\nx\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    Case("chunk_ext_cr", _chunked(b"5;ext=\rx\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    Case("chunk_ext_quoted_lf", _chunked(b'5;a="x\ny"\r\nhello\r\n0\r\n\r\n' + SMUGGLED)),
    Case("last_chunk_ext_lf", _chunked(b"5\r\nhello\r\n0;x\n\r\n\r\n" + SMUGGLED)),
    Case("trailer_bare_lf", _chunked(b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n" + SMUGGLED)),
    Case("trailer_obs_fold", _chunked(b"5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n" + SMUGGLED)),
    # oversized request line and headers
    Case("request_line_too_long", _get(b"Host: platform.test\r\n", b"/" + b"a" * 20000)),
    Case("header_too_long", _get(b"Host: platform.test\r\nX-Big: " + b"b" * 70000 + b"\r\n")),
    Case("name_too_long", _get(b"Host: platform.test\r\n" + b"X" * 70000 + b": 1\r\n")),
    Case("too_many_headers", _get(b"Host: platform.test\r\n"
                                  + b"".join(b"X-%d: v\r\n" % i for i in range(500)))),
    # Host confusion
    Case("absolute_form_other_host", b"GET http://other.example/api/threads HTTP/1.1\r\n"
                                     b"Host: platform.test\r\n\r\n"),
    Case("duplicate_host", _get(b"Host: platform.test\r\nHost: other.example\r\n")),
    Case("duplicate_host_same", _get(b"Host: platform.test\r\nHost: platform.test\r\n")),
    Case("missing_host", _get(b"X-A: 1\r\n")),
    Case("host_with_path", _get(b"Host: platform.test/evil\r\n")),
    Case("host_with_space", _get(b"Host: platform.test evil\r\n")),
    Case("absolute_form_userinfo", b"GET http://user@platform.test/api/threads HTTP/1.1\r\n"
                                   b"Host: platform.test\r\n\r\n"),
    # the request line itself
    Case("http_version_junk", b"GET /api/threads HTTP/1.x\r\nHost: platform.test\r\n\r\n"),
    Case("method_with_slash", b"GE/T /api/threads HTTP/1.1\r\nHost: platform.test\r\n\r\n"),
    Case("target_with_space", b"GET /api/containers /x HTTP/1.1\r\nHost: platform.test\r\n\r\n"),
    # bodies that go wrong after the proxy has started forwarding the request
    Case("late_chunk_size_not_hex", _chunked(b"5\r\nhello\r\nzz\r\n0\r\n\r\n"), split=True),
    Case("late_chunk_ext_lf", _chunked(b"5;x\nb\r\nhello\r\n0\r\n\r\n" + SMUGGLED), split=True),
    Case("late_chunk_data_too_long", _chunked(b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
         split=True),
    Case("late_chunk_size_bare_lf", _chunked(b"5\nhello\r\n0\r\n\r\n" + SMUGGLED), split=True),
    Case("late_trailer_bare_lf", _chunked(b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n" + SMUGGLED),
         split=True),
]


# Not valid HTTP either, but read one way only: the proxy re-frames what it forwards, so
# the upstream gets one clean request (and the client an answer in its own version).
TOLERATED = [
    Case("target_two_spaces", b"GET /api/threads  HTTP/1.1\r\nHost: platform.test\r\n"
                              b"Connection: close\r\n\r\n"),
    Case("header_value_trailing_tab", _get(b"Host: platform.test\r\nX-A: b\t\r\n"
                                           b"Connection: close\r\n")),
    Case("absolute_form_default_port", b"GET http://platform.test:80/api/threads HTTP/1.1\r\n"
                                       b"Host: platform.test\r\nConnection: close\r\n\r\n"),
    Case("absolute_form_host_case", b"GET HTTP://PLATFORM.test/api/threads HTTP/1.1\r\n"
                                    b"Host: platform.TEST\r\nConnection: close\r\n\r\n"),
]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture(autouse=True)
def quiet_logs() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("json", "DEBUG", stream)
    return stream


@pytest.fixture
async def gateway(raw_upstream: RawUpstream) -> AsyncIterator[Gateway]:
    env = {"GATEPROXY_HOST": "127.0.0.1", "GATEPROXY_PORT": "0",
           "PLATFORM_SERVER_URL": raw_upstream.url,
           "DOCKER_RUNNER_BASE_URL": "http://127.0.0.1:9"}
    gw = Gateway(config.load(None, env))
    await gw.start()
    yield gw
    await gw.stop()


async def exchange(port: int, data: bytes, timeout: float = 3.0, split: bool = False) -> bytes:
    """Send `data`, read until the proxy closes the connection, or `timeout`, or a short
    while after a complete response (long enough to catch a second one). `split`: the
    head first, the rest once the proxy has had time to start forwarding."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        if split:
            cut = data.index(b"\r\n\r\n") + 4
            writer.write(data[:cut])
            await asyncio.sleep(0.3)
            data = data[cut:]
        writer.write(data)
        deadline = asyncio.get_running_loop().time() + timeout
        async with asyncio.timeout_at(deadline):
            while chunk := await reader.read(65536):
                got += chunk
                if _complete(got):
                    deadline = min(deadline, asyncio.get_running_loop().time() + 0.3)
                    break
        async with asyncio.timeout_at(deadline):
            while chunk := await reader.read(65536):
                got += chunk
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
    return got


def _complete(raw: bytes) -> bool:
    """Whether `raw` holds at least one whole response."""
    try:
        return bool(statuses(raw, strict=True))
    except (AssertionError, ValueError):
        return False


def statuses(raw: bytes, strict: bool = False) -> list[int]:
    """The status codes of the responses in `raw`, in order, read response by response
    (bodies skipped by their framing, so that an echoed request line is not counted).
    `strict`: raise unless every response is complete."""
    out: list[int] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n\r\n", pos)
        match = re.match(rb"HTTP/\d\.\d (\d{3})", raw[pos:pos + 16])
        if end < 0 or match is None:
            raise AssertionError(f"not a response: {raw[pos:pos + 200]!r}")
        out.append(int(match.group(1)))
        head = raw[pos:end].lower()
        pos = end + 4
        length = re.search(rb"\r\ncontent-length: *(\d+)", head)
        if length:
            pos += int(length.group(1))
            if strict and pos > len(raw):
                raise AssertionError("a body cut short")
        elif b"\r\ntransfer-encoding: chunked" in head:
            while True:
                line_end = raw.index(b"\r\n", pos)
                size = int(raw[pos:line_end].split(b";")[0], 16)
                pos = line_end + 2 + size + 2
                if size == 0:
                    break
        else:
            if strict:
                raise AssertionError("a body read until the connection closes")
            break
    return out


def received(upstream: RawUpstream) -> list[WireRequest]:
    try:
        return upstream.received
    except Ambiguous as exc:
        raise AssertionError(f"the upstream received an ambiguous request: {exc}") from exc


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_malformed_requests_get_4xx_or_close_and_nothing_ambiguous_upstream(
        case: Case, gateway: Gateway, raw_upstream: RawUpstream) -> None:
    raw = await exchange(gateway.port, case.data, split=case.split)
    codes = statuses(raw)
    assert codes == [] or 400 <= codes[0] < 500, (case.name, raw[:300])
    assert len(codes) <= 1, f"{case.name}: a second response means a second request: {codes}"
    await asyncio.sleep(0.2)  # let anything forwarded arrive, and an aborted request end
    seen = received(raw_upstream)
    assert seen == [], f"{case.name}: forwarded {[(r.method, r.target) for r in seen]}"


async def test_garbage_after_a_valid_request_is_a_400_after_its_answer(
        gateway: Gateway, raw_upstream: RawUpstream) -> None:
    """llhttp frames the valid request as Node's `http` does: it is answered; what follows
    it is no request, gets a 400 and ends the connection, and nothing of it goes on."""
    raw = await exchange(gateway.port, _get(b"Host: platform.test\r\nConnection: keep-alive\r\n")
                         + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
    assert statuses(raw) == [200, 400]
    assert raw.rstrip().endswith(b"}") and b"Connection: close" in raw
    await asyncio.sleep(0.2)
    assert [(r.method, r.target) for r in received(raw_upstream)] == [("GET", "/api/threads")]


async def test_a_request_hidden_in_a_well_framed_body_stays_in_the_body(
        gateway: Gateway, raw_upstream: RawUpstream) -> None:
    body = SMUGGLED * 2
    raw = await exchange(gateway.port, _post(b"Content-Length: %d\r\nConnection: close\r\n"
                                             % len(body), body))
    assert statuses(raw) == [200]
    seen = received(raw_upstream)
    assert [(r.method, r.target, r.body) for r in seen] == [("POST", "/api/threads", body)]


async def test_a_valid_chunked_body_is_reframed_unambiguously(
        gateway: Gateway, raw_upstream: RawUpstream) -> None:
    raw = await exchange(gateway.port, _post(
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n",
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"))
    assert statuses(raw) == [200]
    seen = received(raw_upstream)
    assert [(r.method, r.body) for r in seen] == [("POST", b"hello world")]


async def test_pipelined_requests_are_forwarded_one_by_one(
        gateway: Gateway, raw_upstream: RawUpstream) -> None:
    one = _get(b"Host: platform.test\r\n", b"/one")
    two = _post(b"Content-Length: 3\r\n", b"abc", b"/two")
    three = _get(b"Host: platform.test\r\nConnection: close\r\n", b"/three")
    raw = await exchange(gateway.port, one + two + three)
    assert statuses(raw) == [200, 200, 200]
    seen = received(raw_upstream)
    assert [(r.method, r.target, r.body) for r in seen] == [
        ("GET", "/one", b""), ("POST", "/two", b"abc"), ("GET", "/three", b"")]


async def test_absolute_form_with_its_own_host_is_forwarded_with_that_host(
        gateway: Gateway, raw_upstream: RawUpstream) -> None:
    raw = await exchange(gateway.port, b"GET http://platform.test/api/threads?q=1 HTTP/1.1\r\n"
                         b"Host: platform.test\r\nConnection: close\r\n\r\n")
    assert statuses(raw) == [200]
    seen = received(raw_upstream)
    assert [(r.target, r.values("Host")) for r in seen] == [("/api/threads?q=1",
                                                             ["platform.test"])]


@pytest.mark.parametrize("case", TOLERATED, ids=[c.name for c in TOLERATED])
async def test_tolerated_oddities_reach_the_upstream_as_one_clean_request(
        case: Case, gateway: Gateway, raw_upstream: RawUpstream) -> None:
    raw = await exchange(gateway.port, case.data)
    assert statuses(raw) == [200], (case.name, raw[:300])
    seen = received(raw_upstream)
    assert [(r.method, r.target) for r in seen] == [("GET", "/api/threads")]


@pytest.mark.parametrize("version", [b"2.0", b"0.9", b"3.1"])
async def test_other_http_versions_get_505_and_are_not_forwarded(
        version: bytes, gateway: Gateway, raw_upstream: RawUpstream) -> None:
    raw = await exchange(gateway.port, b"GET /api/threads HTTP/" + version
                         + b"\r\nHost: platform.test\r\n\r\n")
    codes = statuses(raw)
    assert codes == [] or codes[0] == 505 or 400 <= codes[0] < 500, raw[:300]
    assert received(raw_upstream) == []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_the_answer_to_a_bad_request_says_nothing_extra(
        case: Case, gateway: Gateway) -> None:
    """No library or Python version, no request bytes echoed, an HTTP/1.1 status line."""
    raw = await exchange(gateway.port, case.data, split=case.split)
    if not raw:
        return  # closed without an answer: nothing said at all
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), (case.name, head[:100])
    lowered = raw.lower()
    assert b"aiohttp" not in lowered and b"python" not in lowered, (case.name, raw[:300])
    assert b"server: gateproxy" in lowered, (case.name, raw[:300])
    request_lines = [line for line in case.data.split(b"\r\n") if len(line) > 6]
    assert not any(line in body for line in request_lines), (case.name, body[:300])


@pytest.mark.parametrize("request_line", [b"GET /api/containers HTTP/1.0",
                                          b"GET /api/threads HTTP/0.9",
                                          b"GET /api/threads HTTP/2.0",
                                          b"GET /_gateproxy/nope HTTP/1.0"])
async def test_the_status_line_is_http_1_1_whatever_the_client_version(
        request_line: bytes, gateway: Gateway) -> None:
    raw = await exchange(gateway.port, request_line + b"\r\nHost: platform.test\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    assert b"\r\nServer: gateproxy\r\n" in raw and b"\r\nConnection: close\r\n" in raw


async def test_malformed_requests_do_not_write_a_log_line_each(
        gateway: Gateway, quiet_logs: io.StringIO, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp logs every unparseable request with a traceback on its own logger; here
    they are counted, and the count is logged at most every few seconds, as JSON."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    for case in CASES[:40]:
        await exchange(gateway.port, case.data, timeout=1.0, split=case.split)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], \
        [r.getMessage() for r in caplog.records][:3]
    await gateway.stop()  # flushes the pending count
    lines = [orjson.loads(line) for line in quiet_logs.getvalue().splitlines()]
    limits = [line for line in lines if line["event"] == "client_limits"]
    assert 1 <= len(limits) <= 2, limits
    assert sum(int(line.get("badRequests", 0)) for line in limits) >= 35
    assert not [line for line in lines if line["event"] == "request_error"]


async def test_the_process_writes_only_json_lines_under_hostile_input(
        tmp_path: Path, raw_upstream: RawUpstream, procs: list[Proc]) -> None:
    """The real process (uvloop, the C parser): every malformed request above, and its
    stderr still holds one JSON object per line, a handful of them."""
    port = free_port()
    path = tmp_path / "hostile.yaml"
    path.write_text(f"listen: {{host: 127.0.0.1, port: {port}}}\n"
                    f"upstream: {{url: '{raw_upstream.url}'}}\n"
                    "shutdown_delay_ms: 0\n"
                    "dependencies: [{name: docker-runner, base_url: 'http://127.0.0.1:9'}]\n")
    proc = Proc("serve", "--config", str(path))
    procs.append(proc)
    await asyncio.wait_for(wait_live(port), 15)
    for _ in range(3):
        await asyncio.gather(*(exchange(port, case.data, timeout=2.0, split=case.split)
                               for case in CASES))
    assert received(raw_upstream) == []
    proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.popen.wait, 15) == 0
    assert proc.popen.stderr is not None
    lines = proc.popen.stderr.read().decode().splitlines()
    assert all(line.startswith("{") for line in lines), [ln for ln in lines if ln[:1] != "{"][:5]
    events = [orjson.loads(line)["event"] for line in lines]
    assert len(events) < 25, events
    assert "client_limits" in events
