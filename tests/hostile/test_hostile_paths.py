"""Gate bypass attempts: no spelling of a gated path reaches the
upstream while its dependency is down.

Three layers: a hand-written corpus (on top of tests/support/corpora.GATED_SPELLINGS),
hypothesis generating spellings against the pure `routes` functions (many examples,
fast), and the same generator against a real Gateway over raw sockets (fewer examples,
end to end, the stand-in upstream recording whatever reaches it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateproxy.core import paths
from gateproxy.core.paths import BadPath
from tests.support.corpora import GATED_SPELLINGS
from tests.support.hostile_support import Stack
from tests.support.own_answers import NOT_READY
from tests.support.path_verdicts import gated, judged
from tests.support.rawclient import blocking_exchange

# Each is a spelling of /api/containers (or below it) that some router could take for
# it; none of them is in GATED_SPELLINGS.
CORPUS = [
    # letter case
    "/Api/Containers", "/aPi/cOnTaInErS/abc", "/API/CONTAINERS/",
    # repeated slashes
    "///api/containers", "/api///containers", "/api/containers///",
    "//api//containers//abc//",
    # dot segments
    "/api/containers/.", "/api/containers/./abc", "/api/./././containers",
    "/a/b/../../api/containers", "/api/containers/abc/def/../..", "/api/v1/../containers",
    "/api/containers/x/./../y",
    # encoded dot segments, in every case mix
    "/x/.%2e/api/containers", "/x/%2e./api/containers", "/x/%2E%2e/api/containers",
    "/api/%2e/containers", "/%2E/api/%2E/containers", "/api/x/%2e%2e/containers/abc",
    "/api/x/.%2E/containers",
    # percent-encoded unreserved characters, decoded once
    "/%61%70%69/%63%6f%6e%74%61%69%6e%65%72%73", "/%41%50%49/%43%4F%4E%54%41%49%4E%45%52%53",
    "/ap%69/containers", "/api/container%73", "/api/cont%61iners", "/%61pi/%63ontainers/%61bc",
    "/api/con%74ainers", "/api/containers/%7Euser", "/api/c%6fntainers/a%2Db",
    # encoded slash and backslash, read as '/'
    "/api%2f%63ontainers", "/%2Fapi/containers", "/api%5Ccontainers/abc", "/api%5ccontainers",
    "/api\\containers\\abc", "/api/\\containers", "/api%2F%2Fcontainers",
    "/api%2f.%2fcontainers", "/api%2F..%2Fapi%2Fcontainers", "/api%2Fcontainers%2Fabc",
    # ;parameters dropped from a segment
    "/api;/containers", "/api;x=1/containers;y=2", "/api/containers;", "/api/containers;a=b/abc",
    "/api/containers;jsessionid=ABC?x=1", "/api/containers/;",
    # query, fragment and trailing slashes
    "/api/containers/?", "/api/containers?", "/api/containers/#", "/api/containers?r=/x",
    "/api/containers/abc?x=/../",
    # absolute-form targets are judged by their path
    "http://platform.test/api/containers", "https://platform.test/api/containers",
    "http://platform.test:8080/API/containers/abc", "hTTp://platform.test/api%2fcontainers",
    "http://platform.test//api/containers", "http://platform.test/x/../api/containers",
    # real routes below the prefix, and mixtures of all of the above
    "/api/containers/11111111-2222-4333-8444-555555555555/terminal/ws",
    "/api/containers/abc/terminal/sessions", "/API/%2e/%43ontainers;v=1/ABC/",
    "//%61pi\\.\\containers", "/x/y/%2e%2e/..//api/./containers//",
    "/%61PI%2F%2E%2F%43ONTAINERS;a", "/api/%43%4fNTAINERS/%2e/",
]

# Close to a gated path but another route for every router: forwarded, byte for byte.
# Lookalikes of the gated prefix, and the target the upstream gets for each: the same
# bytes, in normal form.
FORWARDED_AS = {
    "/api/containersx": "/api/containersx",
    "/api/containers-x": "/api/containers-x",
    "/api/container": "/api/container",
    "/apicontainers": "/apicontainers",
    "/api/containers%2Dx": "/api/containers-x",
    "/api/%2563ontainers": "/api/%2563ontainers",
    "/api/containers%3Bx": "/api/containers%3Bx",
    "/api%252Fcontainers": "/api%252Fcontainers",
    "/api/x/containers": "/api/x/containers",
    "/containers": "/containers",
    "/api/containers.json": "/api/containers.json",
    "/api/%2e%2e%2econtainers": "/api/...containers",
    "/api/containers%20": "/api/containers%20",
    "/api%3Fcontainers": "/api%3Fcontainers",
    # and paths elsewhere that are not in normal form
    "/echo/%7Euser/%41%42?%61=1": "/echo/~user/AB?%61=1",
    "/echo//double//slash/": "/echo/double/slash/",
    "/echo/./dot/../x?a=/../b": "/echo/x?a=/../b",
}
LOOKALIKES = list(FORWARDED_AS)

# Paths no upstream should see: 400 from the proxy (or from aiohttp's parser).
REJECTED = [
    "%2Fapi/containers", "\\api\\containers", "/api/containers/../../..",
    "/%2e%2e/api/containers", "/api/containers%00", "/api/containers%0d%0aX-Injected:%201",
    "/api/containers/%09", "/api/containers/%7F", "/api/%2e%2e/%2E%2E/containers",
    "/api/containers\x01", "/api/con tainers/x",
    # a fragment, whatever the path (RFC 9112 section 3.2)
    "/echo/x/%2e%2E/%2E?q#f", "/echo#", "/#/api/containers",
]


def test_the_corpus_is_new_and_large_enough() -> None:
    assert len(CORPUS) >= 60
    assert len(set(CORPUS)) == len(CORPUS), "no duplicates within the corpus"
    assert not set(CORPUS) & set(GATED_SPELLINGS), "extends GATED_SPELLINGS, no repeats"


@pytest.mark.parametrize("target", CORPUS)
def test_every_corpus_spelling_is_gated(target: str) -> None:
    assert gated(target), target
    path = paths.split_target(target)[0]
    assert paths.canonical(paths.canonical(path)) == paths.canonical(path)


@pytest.mark.parametrize("target", LOOKALIKES)
def test_lookalikes_are_not_gated(target: str) -> None:
    assert not gated(target), target


# A space ends the request target on the wire: only aiohttp's parser sees that one. A
# fragment is the gate's to refuse (whatever the path), not the normal form's.
@pytest.mark.parametrize("target", [t for t in REJECTED if " " not in t and "#" not in t])
def test_rejected_paths_raise_bad_path(target: str) -> None:
    with pytest.raises(BadPath):
        judged(target)


# --- the generator ---------------------------------------------------------------------

def _spell(text: str, modes: list[int]) -> str:
    """`text` with each character as some client might send it: mode 0-3 as is, 4 in
    the other case, 5 percent-encoded in upper-case hex, 6 in lower-case hex, 7 both."""
    out = []
    for c, mode in zip(text, modes, strict=True):
        if mode in (4, 7) and c.isalpha():
            c = c.swapcase()
        if mode >= 5:
            code = f"%{ord(c):02X}"
            c = code.lower() if mode == 6 else code
        out.append(c)
    return "".join(out)


@st.composite
def _segment(draw: st.DrawFn, text: str) -> str:
    # One draw for the whole segment: drawing per character makes generation the slow part.
    modes = draw(st.lists(st.integers(0, 7), min_size=len(text), max_size=len(text)))
    out = _spell(text, modes)
    if draw(st.integers(0, 5)) == 0:
        out += ";" + draw(st.sampled_from(["", "v=1", "jsessionid=ABC", "a;b", "x=%2F"]))
    return out


# Ways to go from one segment to the next that every lenient reading takes for '/'.
_SEPARATORS = ["/", "//", "///", "%2F", "%2f", "\\", "%5C", "%5c", "/./", "/%2e/", "/%2E/",
               "/junk/../", "/junk/%2e%2e/", "/junk/.%2E/", "/junk/%2E./", "/./junk/../",
               "\\.\\", "%2F.%2F", "/a;b/../"]
_LEADS = ["", "/.", "/x/..", "/%2e", "/", "/./.", "/a/b/../.."]
_TRAILS = ["", "/", "//", "/.", "/%2e", "?x=1", "?", "#frag", ";", ";a=b", "/;x", "/?a=/../b"]
_SUFFIXES = ["abc", "11111111-2222-4333-8444-555555555555", "terminal", "ws", "events",
             "x.y", "~u", "a-b_c", "sessions"]
_SCHEMES = ["http://", "HTTP://", "https://", "Http://"]
_HOSTS = ["platform.test", "platform.test:8080", "127.0.0.1", "evil.example"]


@st.composite
def spellings(draw: st.DrawFn, prefix: str = "/api/containers") -> str:
    """A request target for `prefix` (or a path below it) in some lenient spelling."""
    words = [w for w in prefix.split("/") if w]
    words += draw(st.lists(st.sampled_from(_SUFFIXES), max_size=3))
    path = draw(st.sampled_from(_LEADS)) + "/" + draw(_segment(words[0]))
    for word in words[1:]:
        path += draw(st.sampled_from(_SEPARATORS)) + draw(_segment(word))
    path += draw(st.sampled_from(_TRAILS))
    if draw(st.integers(0, 4)) == 0:
        path = draw(st.sampled_from(_SCHEMES)) + draw(st.sampled_from(_HOSTS)) + path
    return path


@given(spellings())
@settings(max_examples=2000, deadline=None)
def test_generated_spellings_are_gated(target: str) -> None:
    assert gated(target), target


@given(spellings("/test/workspaces"))
@settings(max_examples=300, deadline=None)
def test_generated_spellings_of_a_method_rule_are_gated_for_its_method(target: str) -> None:
    assert gated(target, "POST"), target


_PATH_ALPHABET = st.sampled_from(
    [*"aAbB/.;~-_%\\?#", "%2e", "%2E", "%2f", "%5C", "%25", "%41", "%7e", "%3B", "..",
     "%2e%2e", "//", "%00", "%C3%A9"])


@given(st.lists(_PATH_ALPHABET, max_size=30).map(lambda parts: "/" + "".join(parts)))
@settings(max_examples=2000, deadline=None)
def test_normal_form_is_idempotent_and_readings_are_keys(path: str) -> None:
    try:
        path = paths.split_target(path)[0]
        normal = paths.normalise(path)
        readings = judged(path)
    except BadPath:
        return
    assert paths.normalise(normal) == normal
    assert paths.key(normal) in readings, "the plain reading is always one of them"
    for reading in readings:
        assert paths.key(reading) == reading, (path, reading)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~/", min_size=1, max_size=40))
@settings(max_examples=1000, deadline=None)
def test_nothing_is_decoded_twice(text: str) -> None:
    """Every character double-encoded (`%25XX`) stays a literal `%25XX` after canonical
    form: decoding it twice would let `%2563` become `c`."""
    double = "/" + "".join(f"%25{ord(c):02X}" for c in text)
    assert paths.canonical(double).count("%25") == len(text)


# --- the same generator against a real Gateway ------------------------------------------

STACK_YAML = """\
dependencies:
  - name: docker-runner
    base_url: http://127.0.0.1:9
    gated_routes: [/api/containers, {prefix: /test/workspaces, methods: [POST]}]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """docker-runner down (nothing listens on its port) for the whole module: one stack."""
    tmp = tmp_path_factory.mktemp("stack")
    started = Stack(yaml=STACK_YAML).start(str(tmp))
    yield started
    started.stop()


def _request(method: str, target: str) -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: platform.test\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n").encode("latin-1")


def _assert_gated(stack: Stack, method: str, target: str) -> None:
    """The gate's 503, or for a target with a fragment the 400 every such target gets:
    never the upstream."""
    status, raw = blocking_exchange(stack.port, _request(method, target))
    if "#" in target:
        assert status == 400, (target, raw[:300])
        if method != "HEAD":
            assert b'"code":"bad_request"' in raw, (target, raw[:300])
    else:
        assert status == 503, (target, raw[:300])
        if method != "HEAD":
            assert raw.endswith(NOT_READY), (target, raw[:300])
    assert stack.seen == [], f"{target!r} reached the upstream"


_METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


@given(method=_METHODS, target=spellings())
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_no_generated_spelling_reaches_the_upstream(stack: Stack, method: str,
                                                    target: str) -> None:
    _assert_gated(stack, method, target)


@given(target=spellings("/test/workspaces"))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_no_generated_spelling_of_a_method_rule_reaches_the_upstream(stack: Stack,
                                                                     target: str) -> None:
    _assert_gated(stack, "POST", target)


@pytest.mark.parametrize("target", CORPUS)
def test_no_corpus_spelling_reaches_the_upstream(stack: Stack, target: str) -> None:
    _assert_gated(stack, "GET", target)


@pytest.mark.parametrize("target", LOOKALIKES)
def test_lookalikes_are_forwarded_in_normal_form(stack: Stack, target: str) -> None:
    assert stack.recorder is not None
    before = len(stack.recorder.seen)
    status, raw = blocking_exchange(stack.port, _request("GET", target))
    assert status == 200, (target, raw[:300])
    assert stack.seen[before:] == [("GET", FORWARDED_AS[target])]
    del stack.recorder.seen[before:]


@pytest.mark.parametrize("target", REJECTED)
def test_rejected_paths_get_400_and_never_reach_the_upstream(stack: Stack, target: str) -> None:
    status, raw = blocking_exchange(stack.port, _request("GET", target))
    assert status == 400, (target, raw[:300])
    assert stack.seen == []


def test_stack_fixture_runs_with_the_runner_down(stack: Stack) -> None:
    assert stack.gateway is not None
    assert not stack.gateway.node.guards[0].status.is_up
