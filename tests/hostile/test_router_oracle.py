"""The gate against real routers (issue 10): with docker-runner down, no spelling of a
gated route runs a gated handler of Fastify 5, Express 5 or the terminal gateway's
WHATWG-parsed upgrade handler (tests/support/routers/server.js), and over-gating stays rare.

The oracle is the routers' own records, so gateproxy's model of a path is never used to
judge gateproxy. Every spelling goes through a real `gateproxy serve` over a raw socket
and straight to the router, which says what it would have run. A fixed corpus runs every
time; hypothesis generates at least 5,000 more spellings (GATEPROXY_ORACLE_EXAMPLES asks
for another number, e.g. 50000 for a long run).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.node import node_binary, npm_ci
from tests.support.oracle_support import (
    ROUTER_NAMES,
    ROUTERS_DIR,
    Oracle,
    Outcome,
    Proxy,
    Routers,
    Spelling,
    Tally,
    first_distinct,
)

EXAMPLES = int(os.environ.get("GATEPROXY_ORACLE_EXAMPLES", "5000"))
BATCH = 50  # spellings per hypothesis example: one round of concurrent sends
MAX_OVER_GATING_PCT = 1.0

UUID = "11111111-2222-4333-8444-555555555555"
HEX64 = "ab" * 32
DOTS = (".", "%2e", "%2E")
DOTDOTS = ("..", "%2e%2e", "%2E%2E", ".%2e", ".%2E", "%2e.", "%2E.", "%2e%2E", "%2E%2e")
ABSOLUTE = "http://platform.test"
METHODS = ("GET", "DELETE", "POST", "HEAD", "OPTIONS")

# The route table's paths (gated and not), `{id}` standing for a parameter.
ROUTE_PATHS = (
    ("api", "containers", "{id}"),
    ("api", "containers", "{id}", "events"),
    ("api", "containers", "{id}", "terminal", "sessions"),
    ("api", "containers"),
    ("test", "workspaces"),
    ("api", "threads", "{id}"),
    ("api", "threads", "{id}", "messages"),
    ("api", "threads"),
    ("api", "graph"),
    ("api", "containers-summary"),
)
WS_PATH = ("api", "containers", "{id}", "terminal", "ws")
IDS = ("abc", UUID, *DOTDOTS, *DOTS, "")
WS_IDS = (UUID, HEX64, UUID.upper())
WORDS = ("x", "api", "containers", "threads", "test", "workspaces", "events", "terminal")
PARAMS = (";", ";x", ";a=b", ";jsessionid=1")
ODD_SEPARATORS = ("//", "\\", "%2F", "%2f", "%5C", "%5c")
QUERIES = ("", "?x=1", "?", "?r=/../api/containers", "?id=%2e%2e&x=/")
FRAGMENTS = ("", "#f", "#/../x")
FORMS = ("", ABSOLUTE, "HTTP://platform.test", "http://platform.test:80")
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]")


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """The totals of the module's run."""
    totals = Tally()
    yield totals
    # Past pytest's capture, so that the line shows on every run, passed or failed.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{totals.summary()}")


@pytest.fixture(scope="module")
def routers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routers]:
    """One Node process for the proxies."""
    npm_ci(ROUTERS_DIR)
    started = Routers(tmp_path_factory.mktemp("routers") / "routers.log")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory, routers: Routers) -> Iterator[Oracle]:
    """A gateproxy per router: the corpus and the generated spellings go through its
    gate."""
    workdir = tmp_path_factory.mktemp("oracle")
    proxies: dict[str, Proxy] = {}
    try:
        for name in ROUTER_NAMES:
            (workdir / name).mkdir()
            proxies[name] = Proxy(workdir / name, routers.ports[name])
        for proxy in proxies.values():
            proxy.wait_until_down()
        yield Oracle(routers, proxies)
    finally:
        for proxy in proxies.values():
            proxy.stop()


def _bypass_report(outcomes: list[Outcome]) -> str:
    bypasses = [outcome for outcome in outcomes if outcome.bypass]
    return f"{len(bypasses)} gated-handler runs through gateproxy, e.g.:\n" + \
        "\n".join(first_distinct(bypasses))


# --- the fixed corpus -----------------------------------------------------------------

def _corpus() -> list[Spelling]:
    issue = [  # every spelling named in issue 10
        Spelling("DELETE", "/api/containers/.."), Spelling("DELETE", "/api/containers/%2e%2e"),
        Spelling("DELETE", "/api/containers/.%2E"), Spelling("DELETE", "/api/containers/%2E."),
        Spelling("DELETE", "/api/containers/..?x=1"),
        Spelling("GET", "/api/containers/../events"),
        Spelling("POST", "/api/containers/%2e%2e/terminal/sessions"),
        Spelling("DELETE", "/api/%63ontainers/%2e%2e"),
        Spelling("DELETE", f"{ABSOLUTE}/api/containers/.."),
        Spelling("DELETE", "/api/containers//.."), Spelling("DELETE", "/API/CONTAINERS/.."),
    ]
    dotted = [spelling
              for dot in (*DOTDOTS, *DOTS)
              for spelling in (Spelling("DELETE", f"/api/containers/{dot}"),
                               Spelling("DELETE", f"/api/containers/{dot}?x=1"),
                               Spelling("GET", f"/api/containers/{dot}/events"),
                               Spelling("HEAD", f"/api/containers/{dot}/events"),
                               Spelling("POST", f"/api/containers/{dot}/terminal/sessions"))]
    odd = [Spelling(method, target) for method, target in (
        ("GET", "/api/containers"), ("HEAD", "/api/containers"), ("OPTIONS", "/api/containers"),
        ("DELETE", "/api/containers/abc"), ("GET", f"/api/containers/{UUID}/events"),
        ("POST", f"/api/containers/{UUID}/terminal/sessions"), ("POST", "/test/workspaces"),
        ("DELETE", f"{ABSOLUTE}/api/containers/%2e%2e"),
        ("GET", f"{ABSOLUTE}/api/containers/../events"),
        ("POST", "HTTP://platform.test/api/containers/../terminal/sessions"),
        ("DELETE", "http://platform.test:80/api/containers/.."),
        ("DELETE", "/api/containers//%2e%2e"), ("GET", "/api/containers//../events"),
        ("DELETE", "/api//containers/.."), ("DELETE", "//api/containers/.."),
        ("DELETE", "/api/containers/x/../.."), ("DELETE", "/api/containers/./.."),
        ("DELETE", "/Api/Containers/%2E%2E"), ("GET", "/API/containers/../EVENTS"),
        ("POST", "/api/CONTAINERS/../terminal/sessions"), ("DELETE", "/api/container%73/.."),
        ("DELETE", "/%61pi/containers/%2e%2e"), ("GET", "/api/containers/../%65vents"),
        ("POST", "/api/containers/../terminal/%73essions"), ("GET", "/api/%63ontainers"),
        ("GET", "/api/containers/"), ("GET", "/api/containers/?x"), ("GET", "/api/containers/."),
        ("DELETE", "/api/containers/../"), ("DELETE", "/api/containers/..#f"),
        ("DELETE", "/api/containers/..;x"), ("DELETE", "/api/containers;/.."),
        ("DELETE", "/api\\containers\\.."), ("DELETE", "/api/containers%2F.."),
        ("DELETE", "/api/containers/%2e%2e%2F"), ("DELETE", "/api%2Fcontainers/.."),
        ("DELETE", "/api/containers/%5c.."), ("DELETE", "/x/../api/containers/.."),
        ("DELETE", "/api/threads/../containers/abc"), ("GET", "/api/threads/../containers"),
        ("POST", "/test/%77orkspaces"), ("POST", "/test/workspaces/."),
        ("POST", "/test/workspaces/x/.."), ("POST", "/TEST/WORKSPACES"),
        ("POST", "/test//workspaces"), ("POST", "/test/x/../workspaces"),
        ("POST", "/test/workspaces?x"), ("POST", "/test/workspaces/%2e"),
        ("POST", f"{ABSOLUTE}/test/workspaces"), ("POST", "/test/workspaces/"),
    )]
    fast = [Spelling("GET", target, keep_alive=True) for target in (
        "/api/containers", "/api/containers/../events", "/api/%63ontainers",
        "/api/containers/%2e%2e/events", "/API/CONTAINERS", "/api/containers//../events")]
    preflights = [Spelling("OPTIONS", target, preflight=True) for target in (
        "/api/containers", "/api/containers/..", "/api/containers/abc")]
    ws = [Spelling("GET", target, upgrade=True) for target in (
        f"/api/containers/{UUID}/terminal/ws",
        f"/api/containers/{UUID}/terminal/ws?sessionId={UUID}&token=t",
        f"/api/containers/{HEX64}/terminal/ws", f"/api/containers/{UUID}/terminal/x/../ws",
        f"/api/containers/{UUID}/terminal/%2e/ws", f"/x/../api/containers/{UUID}/terminal/ws",
        f"/api\\containers\\{UUID}\\terminal\\ws", f"/api/containers/{UUID}/terminal/ws/.",
        f"/api/containers/{UUID}/terminal/ws#x", f"{ABSOLUTE}/api/containers/{UUID}/terminal/ws",
        f"/api/containers/{UUID}/terminal/ws/%2e%2e/ws",
        f"/api/x/%2E%2E/containers/{UUID}/terminal/ws",
        f"/api/containers/{UUID}/./terminal/ws", f"/a/b/../../api/containers/{UUID}/terminal/ws",
        f"/api/containers/{UUID}/terminal/ws/x/..", f"/api/containers/{UUID}/terminal/ws?",
    )]
    return [*issue, *dotted, *odd, *fast, *preflights, *ws]


CORPUS = _corpus()


def test_corpus_is_large_enough() -> None:
    assert len(set(CORPUS)) >= 100


def test_the_fixed_corpus_never_runs_a_gated_handler(oracle: Oracle, tally: Tally) -> None:
    outcomes = oracle.run(CORPUS)
    tally.add(outcomes, generated=False)
    assert not any(outcome.bypass for outcome in outcomes), _bypass_report(outcomes)


# --- positive controls ----------------------------------------------------------------

def test_the_routers_run_gated_handlers_when_asked_straight(oracle: Oracle) -> None:
    """The oracle can see a bypass: straight to the router, these run gated handlers
    (the dotted ones with `..` as the id: neither router resolves dot segments)."""
    expected = {
        Spelling("DELETE", "/api/containers/abc"): "container-delete",
        Spelling("DELETE", "/api/containers/.."): "container-delete",
        Spelling("DELETE", "/api/containers/%2e%2e"): "container-delete",
        Spelling("GET", "/api/containers/../events"): "container-events",
        Spelling("GET", "/api/containers"): "containers-list",
        Spelling("POST", f"/api/containers/{UUID}/terminal/sessions"): "terminal-sessions",
        Spelling("POST", "/test/workspaces"): "test-workspaces",
        Spelling("GET", f"/api/containers/{UUID}/terminal/x/../ws", upgrade=True): "terminal-ws",
    }
    outcomes = oracle.run(expected)
    for outcome in outcomes:
        runs = outcome.direct_runs
        assert [run.handler for run in runs] == [expected[outcome.spelling]], outcome
        assert runs[0].gated


def test_plain_gated_routes_get_the_503(oracle: Oracle) -> None:
    plain = [Spelling("DELETE", "/api/containers/abc"), Spelling("GET", "/api/containers"),
             Spelling("GET", "/api/containers", keep_alive=True),
             Spelling("HEAD", f"/api/containers/{UUID}/events"),
             Spelling("POST", f"/api/containers/{UUID}/terminal/sessions"),
             Spelling("POST", "/test/workspaces"),
             Spelling("GET", f"/api/containers/{UUID}/terminal/ws", upgrade=True)]
    for outcome in oracle.run(plain):
        assert outcome.gated_by_proxy and not outcome.proxy_runs, outcome.describe()


def test_non_gated_routes_reach_their_handlers_while_the_dependency_is_down(
        oracle: Oracle) -> None:
    expected = {
        Spelling("GET", "/api/threads/abc"): "thread-get",
        Spelling("GET", "/api/threads/abc", keep_alive=True): "thread-get",
        Spelling("DELETE", "/api/threads/abc"): "thread-delete",
        Spelling("POST", "/api/threads/abc/messages"): "thread-message",
        Spelling("GET", "/api/graph"): "graph",
        Spelling("HEAD", "/api/graph"): "graph",
        Spelling("GET", "/api/containers-summary"): "containers-summary",
        Spelling("GET", "/test/workspaces"): "test-workspaces-list",
        Spelling("GET", f"{ABSOLUTE}/api/threads?x=1"): "threads-list",
    }
    outcomes = oracle.run(expected)
    for outcome in outcomes:
        handler = expected[outcome.spelling]
        assert [run.handler for run in outcome.proxy_runs] == [handler], outcome.describe()
        assert outcome.proxy_status == 200, outcome.describe()


def test_cors_preflights_reach_the_router(oracle: Oracle) -> None:
    """The router's CORS plugin answers a preflight even on a gated path (no handler)."""
    outcomes = oracle.run([Spelling("OPTIONS", "/api/containers/abc", preflight=True)])
    for outcome in outcomes:
        assert outcome.proxy_status == 204 and not outcome.proxy_runs, outcome.describe()


# --- generated spellings --------------------------------------------------------------

def _recase(text: str, style: str) -> str:
    if style == "upper":
        return text.upper()
    if style == "title":
        return text[:1].upper() + text[1:]
    return "".join(c.upper() if i % 2 else c for i, c in enumerate(text))


def _encode(segment: str, position: int, upper: bool) -> str:
    """Percent-encode one unreserved character of the segment (not inside an escape)."""
    spots = [i for i, c in enumerate(segment) if _UNRESERVED.fullmatch(c)
             and "%" not in segment[max(i - 2, 0):i]]
    if not spots:
        return segment
    i = spots[position % len(spots)]
    escape = f"%{ord(segment[i]):02X}" if upper else f"%{ord(segment[i]):02x}"
    return segment[:i] + escape + segment[i + 1:]


_positions = st.integers(0, 7)
_mutation = st.one_of(
    st.tuples(st.just("insert"), _positions, st.sampled_from((*DOTDOTS, *DOTS, "", *WORDS))),
    st.tuples(st.just("climb"), _positions, st.sampled_from(WORDS), st.sampled_from(DOTDOTS)),
    st.tuples(st.just("case"), _positions, st.sampled_from(("upper", "title", "alternate"))),
    st.tuples(st.just("encode"), _positions, st.integers(0, 40), st.booleans()),
    st.tuples(st.just("param"), _positions, st.sampled_from(PARAMS)),
    st.tuples(st.just("separator"), _positions, st.sampled_from(ODD_SEPARATORS)),
)


def _mutate(segments: list[str], separators: list[str], mutation: tuple[Any, ...]) -> None:
    kind, position = mutation[0], mutation[1]
    if kind in ("insert", "climb"):
        at = position % (len(segments) + 1)
        new = list(mutation[2:])
        segments[at:at] = new
        separators[at:at] = ["/"] * len(new)
        return
    if not segments:
        return
    at = position % len(segments)
    if kind == "case":
        segments[at] = _recase(segments[at], mutation[2])
    elif kind == "encode":
        segments[at] = _encode(segments[at], mutation[2], mutation[3])
    elif kind == "param":
        segments[at] += mutation[2]
    else:
        separators[at] = mutation[2]


@st.composite
def spellings(draw: st.DrawFn) -> Spelling:
    upgrade = draw(st.sampled_from((False, False, False, True)))
    route = WS_PATH if upgrade else draw(st.sampled_from(ROUTE_PATHS))
    param = draw(st.sampled_from(WS_IDS if upgrade else IDS))
    segments = [param if part == "{id}" else part for part in route]
    separators = ["/"] * len(segments)
    for mutation in draw(st.lists(_mutation, max_size=4)):
        _mutate(segments, separators, mutation)
    path = "".join(sep + seg for sep, seg in zip(separators, segments, strict=True))
    path += "/" if draw(st.booleans()) and draw(st.booleans()) else ""
    target = (draw(st.sampled_from(FORMS)) + path + draw(st.sampled_from(QUERIES))
              + draw(st.sampled_from(FRAGMENTS)))
    if upgrade:
        return Spelling("GET", target, upgrade=True)
    method = draw(st.sampled_from(METHODS))
    return Spelling(method, target, preflight=method == "OPTIONS" and draw(st.booleans()),
                    keep_alive=draw(st.booleans()))


@st.composite
def maybe_spellings(draw: st.DrawFn) -> Spelling | None:
    """Mostly a spelling; None (left out of the batch) when the number drawn is 0, which
    is rare in generation and where shrinking takes every spelling innocent of a failure,
    with nothing left to shrink inside it."""
    return draw(spellings()) if draw(st.integers(0, 15)) else None


def spelling_key(spelling: Spelling | None) -> object:
    """Unique within a batch (hypothesis repeats list elements otherwise); any number of
    spellings may be left out."""
    return object() if spelling is None else spelling


def test_generated_spellings_never_run_a_gated_handler(oracle: Oracle, tally: Tally) -> None:
    """Each example is a batch of spellings sent concurrently; shrinking, which cannot
    shorten a fixed-size list, leaves out every spelling but one that still runs a gated
    handler, and simplifies that one. Then the over-gating of the whole run: under 1 %
    outside the 'when in doubt' families."""

    @settings(max_examples=math.ceil(EXAMPLES * 1.3 / BATCH), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(maybe_spellings(), min_size=BATCH, max_size=BATCH, unique_by=spelling_key))
    def check(batch: list[Spelling | None]) -> None:
        outcomes = oracle.run(s for s in batch if s is not None)
        tally.add(outcomes, generated=True)
        assert not any(outcome.bypass for outcome in outcomes), _bypass_report(outcomes)

    check()
    # Batches leave some out and may repeat a spelling of an earlier one: 30 % more
    # examples than strictly needed covers both.
    assert len(tally.generated) >= EXAMPLES
    assert tally.over_gated_pct < MAX_OVER_GATING_PCT, (
        f"{len(tally.over_gated)} of {tally.counted} spellings over-gated, e.g.:\n"
        + "\n".join(f"{o.describe()} (straight: {o.direct_runs[0]})"
                    for o in list(tally.over_gated.values())[:20]))


def test_over_gating_is_measured_where_gateproxy_gates_in_doubt(oracle: Oracle) -> None:
    """The over-gating count can see something: an encoded slash in a thread id is a
    thread to both routers, and gateproxy gates it by design ('when in doubt')."""
    spelling = Spelling("GET", "/api/threads/..%2Fcontainers")
    outcomes = oracle.run([spelling])
    for outcome in outcomes:
        assert [run.handler for run in outcome.direct_runs] == ["thread-get"], outcome
        assert outcome.over_gated and spelling.in_doubt, outcome.describe()


# --- docs/gate.md's table --------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "gate.md"
TABLE_ROWS = (
    Spelling("GET", "/api/containers"),
    Spelling("DELETE", "/api/containers/abc"),
    Spelling("DELETE", "/api/containers/.."),
    Spelling("DELETE", "/api/containers/%2e%2e"),
    Spelling("DELETE", "/api/containers//.."),
    Spelling("GET", "/api/containers/../events"),
    Spelling("GET", "/x/../api/containers"),
    Spelling("DELETE", "/api/%63ontainers/abc"),
    Spelling("DELETE", "/API/CONTAINERS/abc"),
    Spelling("DELETE", "/api/containers;v=1/abc"),
    Spelling("GET", "/api/threads/..%2Fcontainers"),
    Spelling("GET", "/api/threads/%2e%2e"),
    Spelling("GET", "/../api/containers"),
    Spelling("DELETE", f"{ABSOLUTE}/api/containers/.."),
    Spelling("GET", f"/api/containers/{UUID}/terminal/x/../ws", upgrade=True),
)


def _whatwg_paths(targets: list[str]) -> list[str]:
    """What the WHATWG URL parser (Node's `URL`, as the terminal gateway uses it) makes
    of each target's path."""
    script = ("const ts = JSON.parse(process.argv[1]);"
              "console.log(JSON.stringify(ts.map(t => new URL(t, 'http://localhost')"
              ".pathname)));")
    done = subprocess.run([node_binary(), "-e", script, json.dumps(targets)],
                          capture_output=True, text=True, timeout=30, check=True)
    return list(json.loads(done.stdout))


def _handler(runs: list[Any], status: int | None) -> str:
    return ", ".join(f"`{run.handler}` ({'gated' if run.gated else 'not gated'})"
                     if run.routed else f"{status}, no route" for run in runs) or str(status)


def _gateproxy(outcome: Outcome) -> str:
    if outcome.gated_by_proxy:
        return "503 (gated)"
    if outcome.proxy_status == 400:
        return "400 `bad_request`"
    sent = {run.url for run in outcome.proxy_runs}
    assert len(sent) == 1, outcome.describe()
    return f"forwards `{sent.pop()}`"


def test_the_table_in_docs_gate_md_is_what_the_real_routers_do(oracle: Oracle) -> None:
    """Every row of docs/gate.md's table, measured now: what Fastify 5 and Express 5 run
    when asked straight, what the WHATWG parser reads, and what gateproxy does."""
    outcomes = {(o.spelling, o.router): o for o in oracle.run(TABLE_ROWS)}
    whatwg = _whatwg_paths([s.target for s in TABLE_ROWS])
    lines = ["| Request | Fastify 5, straight | Express 5, straight | WHATWG path | "
             "gateproxy (dependency down) |", "| --- | --- | --- | --- | --- |"]
    for spelling, path in zip(TABLE_ROWS, whatwg, strict=True):
        fastify, express = outcomes[spelling, "fastify"], outcomes[spelling, "express"]
        assert _gateproxy(fastify) == _gateproxy(express), (fastify, express)
        request = f"`{spelling.method} {spelling.target}`" + (
            " (upgrade)" if spelling.upgrade else "")
        lines.append(f"| {request} | {_handler(fastify.direct_runs, fastify.direct_status)} | "
                     f"{_handler(express.direct_runs, express.direct_status)} | `{path}` | "
                     f"{_gateproxy(fastify)} |")
    table = "\n".join(lines)
    doc = DOC.read_text()
    assert table in doc, f"docs/gate.md's table is stale; measured now:\n{table}"
