"""No request's bytes leak into another's: what the upstream receives for a request is that
request's own bytes (changed only as docs/headers.md lists), nothing of another request on
the client's connection and nothing of a request the proxy refuses.

A byte recorder (tests/support/byte_recorder.py) stands in for the platform-server and
keeps every byte it receives. A real gateway in front of it gets every case over a raw
socket. Each test prints its case and what happened (`pytest -rA` or `-s` shows it);
OUTCOMES keeps the same table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson
import pytest

from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app
from tests.support.byte_recorder import ByteRecorder, Request, Seen
from tests.support.ports import free_port
from tests.support.rawclient import Exchange, read_exchange

TIMEOUT = 3.0  # the bound of one conversation with a gateway
PAUSE = 0.1  # how long a connection is watched for a close before it counts as open
HOST = "platform.test"

# case -> what happened: the list to quote.
OUTCOMES: dict[str, str] = {}


# --- the gateway and its recorder -----------------------------------------------------------

@dataclass
class Rig:
    gateway: Gateway
    recorder: ByteRecorder


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A recorder and a gateway in front of it. docker-runner's port refuses connections,
    so that it is down and /api/containers gets the gate's 503 (never forwarded)."""
    recorder = ByteRecorder()
    await recorder.start()
    try:
        gateway = await upstream_app.start_gateway(
            recorder.url, DOCKER_RUNNER_BASE_URL=f"http://127.0.0.1:{free_port()}")
        try:
            yield Rig(gateway, recorder)
        finally:
            await gateway.stop()
    finally:
        await recorder.stop()


# --- talking to a gateway over a raw socket -------------------------------------------------

@dataclass(frozen=True)
class Step:
    data: bytes  # written in one write
    answers: int  # answers to read before the next step


@dataclass
class Talk:
    answers: list[Exchange]
    # How the connection ended after them: "open" (still open after PAUSE), "closed",
    # "reset", "cut" (mid-answer), "timeout", or "client closed".
    end: str


class _Ended(Exception):
    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


async def _answer(reader: asyncio.StreamReader) -> Exchange:
    try:
        return await read_exchange(reader, "GET")
    except asyncio.IncompleteReadError as exc:
        raise _Ended("cut" if exc.partial else "closed") from None
    except ConnectionError:
        raise _Ended("reset") from None


async def _still_open(reader: asyncio.StreamReader) -> None:
    """Return if the gateway keeps the connection open for PAUSE; else say how it ended."""
    try:
        more = await asyncio.wait_for(reader.read(1), PAUSE)
    except TimeoutError:
        return
    except ConnectionError:
        raise _Ended("reset") from None
    raise _Ended(f"unasked bytes {more!r}" if more else "closed")


async def converse(port: int, steps: Sequence[Step]) -> Talk:
    """The steps on one connection. A step after the first is sent only on a connection
    still open (as a client resends on a new connection what a closed one left
    unanswered)."""
    answers: list[Exchange] = []
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(TIMEOUT):
            for number, step in enumerate(steps):
                if number:
                    await _still_open(reader)
                writer.write(step.data)
                for _ in range(step.answers):
                    answers.append(await _answer(reader))
            await _still_open(reader)
        end = "open"
    except _Ended as ended:
        end = ended.how
    except TimeoutError:
        end = "timeout"
    finally:
        writer.close()
    return Talk(answers, end)


async def send_then_quit(port: int, data: bytes, until: Callable[[], bool]) -> Talk:
    """Write `data`, wait (bounded) until `until()`, then close without reading."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        await wait_until(until, TIMEOUT)
    finally:
        writer.close()
    return Talk([], "client closed")


async def wait_until(predicate: Callable[[], bool], limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# --- one case -------------------------------------------------------------------------------

@dataclass
class Result:
    talk: Talk
    seen: list[Seen]  # per upstream connection, what it received during the case

    @property
    def requests(self) -> list[Request]:
        return [r for s in self.seen for r in s.requests]

    @property
    def upstream_bytes(self) -> bytes:
        return b"".join(s.data for s in self.seen)


async def run(rig: Rig, steps: Sequence[Step]) -> Result:
    mark = rig.recorder.mark()
    talk = await converse(rig.gateway.port, steps)
    await rig.recorder.settle()  # a request forwarded late still counts
    return Result(talk, rig.recorder.since(mark))


def summary(result: Result) -> str:
    statuses = [a.status_line.split(" ", 1)[1] for a in result.talk.answers]
    lines = [r.line.decode("latin-1") for r in result.requests] or ["nothing"]
    return f"client got {statuses or 'no answer'} then {result.talk.end}; upstream got {lines}"


def report(case: str, outcome: str, problems: list[str]) -> None:
    OUTCOMES[case] = outcome
    print(f"{case}: {outcome}")
    assert not problems, f"{case}:\n" + "\n".join(f"- {p}" for p in problems)


def error_code(answer: Exchange) -> str | None:
    try:
        return str(orjson.loads(answer.body)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def unframed(result: Result) -> list[str]:
    """Bytes the upstream got that are no complete request: a desynchronised stream."""
    return [f"upstream connection {s.number} got bytes that are no complete request "
            f"({s.problem or 'incomplete'}): {s.rest[:200]!r}"
            for s in result.seen if s.rest or s.problem]


# --- a. a chunked request's trailer fields ------------------------------------------------

@dataclass(frozen=True)
class Trailer:
    name: str
    value: str
    # The value is distinctive: it must appear nowhere in the upstream's bytes. The other
    # values (`5`, `chunked`, `close`) may, so for them no forwarded field may carry it.
    anywhere: bool
    # When aiohttp's C parser refuses the chunked POST itself (400, before gateproxy sees
    # it): "always" for a framing field in the trailer section ("Content-Length can't be
    # present with Transfer-Encoding", "Invalid `Transfer-Encoding` header value"); "one
    # write" when the next request comes in the same read and the leaked field makes it
    # malformed ("Duplicate 'Host' header", "Data after `Connection: close`"): aiohttp
    # then answers 400 for all it read. Nothing is forwarded either way.
    refused: Literal["", "always", "one write"] = ""

    def refused_on(self, pipelined: bool) -> bool:
        return self.refused == "always" or (self.refused == "one write" and pipelined)

    @property
    def first(self) -> bytes:
        """The chunked POST (body `Z`) with this trailer field."""
        return (f"POST /one HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n"
                f"1\r\nZ\r\n0\r\n{self.name}: {self.value}\r\n\r\n").encode()


TRAILERS = [Trailer("Authorization", "Bearer stolen", True),
            Trailer("X-Forwarded-For", "6.6.6.6", True),
            Trailer("Host", "evil.test", True, "one write"),
            Trailer("Content-Length", "5", False, "always"),
            Trailer("Transfer-Encoding", "chunked", False, "always"),
            Trailer("Connection", "close", False, "one write"),
            Trailer("Cookie", "sid=stolen", True),
            Trailer("Via", "1.1 evil", True)]
FIRST_LINE = b"POST /one HTTP/1.1"


@dataclass(frozen=True)
class Next:
    """The request after the chunked POST on the same connection."""

    label: str
    data: bytes
    content: bytes  # its body
    status: int  # its answer
    forwarded: bool  # False: the gate answers it

    @property
    def line(self) -> bytes:
        return self.data.split(b"\r\n", 1)[0]


NEXTS = [Next("GET", f"GET /two HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), b"", 200, True),
         Next("POST", f"POST /two HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 7\r\n\r\n"
              "payload".encode(), b"payload", 200, True),
         Next("gated GET", f"GET /api/containers HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(),
              b"", 503, False)]


def trailer_leaks(trailer: Trailer, result: Result) -> list[str]:
    out = []
    value = trailer.value.encode()
    if trailer.anywhere and value in result.upstream_bytes:
        out.append(f"{value!r} reached the upstream: {result.upstream_bytes!r}")
    name = trailer.name.lower().encode()
    for request in result.requests:
        if request.trailer:
            out.append(f"{request.line!r} went upstream with trailer fields {request.trailer!r}")
        for field, got in request.fields:
            tokens = [t.strip().lower() for t in got.split(b",")]
            # The proxy's own framing of the chunked POST is no leak.
            own = request.line == FIRST_LINE and field == b"transfer-encoding"
            if field == name and value.lower() in tokens and not own:
                out.append(f"{request.line!r} went upstream with `{field.decode()}: "
                           f"{got.decode('latin-1')}`: the trailer")
    return out


def judge_trailer(trailer: Trailer, nxt: Next, pipelined: bool,
                  result: Result) -> tuple[str, list[str]]:
    """What happened (the accepted outcome, or UNACCEPTED and what came), and what is wrong."""
    problems = trailer_leaks(trailer, result) + unframed(result)
    talk, requests = result.talk, result.requests
    answers = [(a.status, error_code(a)) for a in talk.answers]
    if (trailer.refused_on(pipelined) and answers == [(400, "bad_request")]
            and talk.end == "closed" and not result.upstream_bytes):
        return "POST refused 400 by aiohttp's parser, nothing forwarded, closed", problems
    outcome = None
    if not answers or answers[0][0] != 200:
        problems.append(f"the chunked POST was not answered 200: {summary(result)}")
    if not requests or requests[0].line != FIRST_LINE or requests[0].content != b"Z":
        problems.append(f"the chunked POST did not reach the upstream with its body Z: "
                        f"{summary(result)}")
    after = [(r.line, r.content) for r in requests[1:]]
    # A reset instead of a clean close: the client wrote into a connection closing anyway.
    if len(answers) == 1 and talk.end in ("closed", "reset") and not after:
        outcome = "POST forwarded; closed after its answer, next not forwarded"
    elif (len(answers) == 2 and answers[1][0] == nxt.status
          and after == ([(nxt.line, nxt.content)] if nxt.forwarded else [])):
        how = "forwarded without the trailer" if nxt.forwarded else "gated, not forwarded"
        outcome = f"POST forwarded; next answered {nxt.status} on the same connection, {how}"
    else:
        problems.append(f"the next request: {summary(result)}")
    if outcome is None or problems:
        outcome = f"UNACCEPTED: {summary(result)}"
    return outcome, problems


@pytest.mark.parametrize("pipelined", [True, False], ids=["one-write", "two-writes"])
@pytest.mark.parametrize("nxt", NEXTS, ids=[n.label for n in NEXTS])
@pytest.mark.parametrize("trailer", TRAILERS, ids=[t.name for t in TRAILERS])
async def test_trailer_fields_stay_with_their_request(rig: Rig, trailer: Trailer, nxt: Next,
                                                      pipelined: bool) -> None:
    """A trailer field never reaches the upstream, in or after its request. The chunked POST
    is forwarded (or refused whole by aiohttp's parser: see Trailer.refused); the next
    request on the connection is either answered without the trailer or never read (the
    connection closes after the first answer, and a client sends it again on a new one)."""
    steps = ([Step(trailer.first + nxt.data, 2)] if pipelined
             else [Step(trailer.first, 1), Step(nxt.data, 1)])
    outcome, problems = judge_trailer(trailer, nxt, pipelined, await run(rig, steps))
    mode = "one write" if pipelined else "two writes"
    report(f"trailer {trailer.name}: {trailer.value}, then {nxt.label}, {mode}", outcome,
           problems)


# --- b, c. requests refused before any byte goes upstream -----------------------------------

def judge_refused(result: Result) -> tuple[str, list[str]]:
    problems = []
    answer = result.talk.answers[0] if result.talk.answers else None
    if answer is None or answer.status != 400 or error_code(answer) != "bad_request":
        problems.append(f"not answered 400 bad_request: {summary(result)}"
                        + (f", body {answer.body[:200]!r}" if answer else ""))
    if result.upstream_bytes:
        problems.append(f"forwarded: the upstream got {result.upstream_bytes!r}")
    return summary(result), problems


async def refused(rig: Rig, case: str, request: bytes) -> None:
    outcome, problems = judge_refused(await run(rig, [Step(request, 1)]))
    report(case, outcome, problems)


@pytest.mark.parametrize("target", ["/#/api/containers", "/x#frag", "/api/threads?x=1#y", "/#"])
async def test_fragment_in_target_is_refused(rig: Rig, target: str) -> None:
    """A fragment is the client's own: a target with `#` is no request to forward."""
    request = f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    await refused(rig, f"fragment GET {target}", request)


@pytest.mark.parametrize("value", [b"\x85\x93\xa0", b"a\x01b", b"a\x7fb"],
                         ids=["obs-text", "ctl-01", "del-7f"])
async def test_field_value_that_cannot_pass_unchanged_is_refused(rig: Rig, value: bytes) -> None:
    """A value that is not UTF-8 would be re-encoded on the way; control bytes are no value."""
    request = b"GET /x HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX-A: " + value + b"\r\n\r\n"
    await refused(rig, f"field value {value!r}", request)


async def test_utf8_field_value_passes_byte_for_byte(rig: Rig) -> None:
    line = b"X-A: caf\xc3\xa9\r\n"
    request = b"GET /x HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n" + line + b"\r\n"
    result = await run(rig, [Step(request, 1)])
    problems = []
    got = result.upstream_bytes
    if [a.status for a in result.talk.answers] != [200]:
        problems.append(f"not answered 200: {summary(result)}")
    if [r.line for r in result.requests] != [b"GET /x HTTP/1.1"] or b"\r\n" + line not in got:
        problems.append(f"the upstream did not get {line!r} as sent: {got!r}")
    problems += unframed(result)
    report("field value b'caf\\xc3\\xa9'", summary(result), problems)


# --- d. very large announced bodies ---------------------------------------------------------

UPLOAD = b"POST /upload HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nContent-Length: %d\r\n\r\n"


async def test_body_announced_as_10_gb_and_cut_short(rig: Rig) -> None:
    """What goes upstream of a body the client abandons: only bytes the client sent for
    it, and the upstream connection let go of."""
    sent = b"abcdef"
    recorder, mark = rig.recorder, rig.recorder.mark()

    def arrived() -> bool:
        data = b"".join(s.data for s in recorder.since(mark))
        head_end = data.find(b"\r\n\r\n")
        return head_end >= 0 and len(data) - head_end - 4 >= len(sent)

    def let_go() -> bool:
        return all(s.closed for s in recorder.since(mark))

    # The client leaves once what it sent has reached the upstream (or after TIMEOUT);
    # then the proxy has nothing to finish upstream and should let go of the connection.
    talk = await send_then_quit(rig.gateway.port, UPLOAD % 10_000_000_000 + sent, arrived)
    await recorder.settle()
    await wait_until(let_go, 2.0)
    result = Result(talk, recorder.since(mark))
    problems = []
    data = result.upstream_bytes
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        outcome = f"upstream request not started (got {data!r})"
    else:
        body = data[head_end + 4:]
        closed = "closed" if all(s.closed for s in result.seen) else "left open after 2 s"
        head = data[:head_end].split(b"\r\n")
        length = [h for h in head if h.lower().startswith(b"content-length:")]
        outcome = (f"upstream request started ({head[0]!r}, {length}), {len(body)} "
                   f"body bytes arrived, upstream connection {closed}")
        if not data.startswith(b"POST /upload HTTP/1.1\r\n") or not sent.startswith(body):
            problems.append(f"the upstream got other bytes than the client's: {data!r}")
    report("POST /upload, Content-Length 10 GB, 6 bytes sent, client closes", outcome,
           problems)


async def test_body_of_2_mb_is_forwarded_whole(rig: Rig) -> None:
    body = upstream_app.pattern(2_000_000)
    result = await run(rig, [Step(UPLOAD % len(body) + body, 1)])
    problems = []
    requests = result.requests
    arrived = sum(len(r.content) for r in requests)
    if [a.status for a in result.talk.answers] != [200]:
        problems.append(f"not answered 200: {summary(result)}")
    if [(r.line, r.content == body) for r in requests] != [(b"POST /upload HTTP/1.1", True)]:
        problems.append("the upstream did not get the body whole")
    problems += unframed(result)
    report("POST /upload, Content-Length 2000000, sent whole",
           f"{summary(result)}; {arrived} body bytes arrived", problems)
