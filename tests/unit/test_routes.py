"""Canonical paths and prefix matching, as pure functions."""

from __future__ import annotations

import pytest

from gateproxy.core import paths
from gateproxy.core.paths import BadPath, RouteTable, Rule
from tests.support.corpora import GATED_SPELLINGS
from tests.support.path_verdicts import gated, judged


@pytest.mark.parametrize("target", GATED_SPELLINGS)
def test_every_spelling_of_a_gated_path_is_gated(target: str) -> None:
    assert gated(target), target


@pytest.mark.parametrize("target", [
    "/api/containersx", "/api/container", "/api", "/", "/api/threads",
    "/api/containers%2Dx",  # an encoded '-' decodes to /api/containers-x: another route
    "/api/containers%252fabc".replace("/api/containers", "/api/x"),
    "*",
])
def test_other_paths_are_not_gated(target: str) -> None:
    assert not gated(target), target


def test_methods_restrict_a_rule() -> None:
    assert gated("/test/workspaces", "POST")
    assert not gated("/test/workspaces", "GET")
    assert gated("/TEST/workspaces/", "POST")


@pytest.mark.parametrize("target", [
    "/api/containers\x00", "/api/con\ttainers", "/api/%00containers", "/a/%1fb", "/a%7f",
    "/..", "/../api/containers", "/a/../../b", "/%2e%2e/x", "/a//../..", "not-a-path",
])
def test_hostile_paths_are_bad_requests(target: str) -> None:
    with pytest.raises(BadPath):
        judged(target)


def test_lenient_readings_stop_at_the_root_as_the_whatwg_parser_does() -> None:
    assert gated("/a/..%2F..%2F..%2Fapi/containers")
    assert gated("/x\\..\\..\\api\\containers")


@pytest.mark.parametrize("path", ["/api/Containers/%2e%2e/x", "/a%2fb/%41", "/A//b/./c/",
                                  "/a;b/%252e", "/%7e/x", "/x/%C3%A9"])
def test_canonical_form_is_idempotent(path: str) -> None:
    once = paths.canonical(path)
    assert paths.canonical(once) == once


def test_nothing_is_decoded_twice() -> None:
    assert paths.canonical("/api/%2563ontainers") == "/api/%2563ontainers"
    assert not gated("/api/%2563ontainers")


@pytest.mark.parametrize(("target", "path", "rest"), [
    ("/a//b/../c?x=%2F/../", "/a//b/../c", "?x=%2F/../"),
    ("/a#f?g", "/a", "#f?g"),
    ("http://h:1/a/b?q=1", "/a/b", "?q=1"),
    ("HTTP://h:1?q=1", "/", "?q=1"),
    ("http://h:1", "/", ""),
    ("*", "*", ""),
])
def test_split_target_keeps_what_follows_the_path_exactly(target: str, path: str,
                                                           rest: str) -> None:
    assert paths.split_target(target) == (path, rest)


@pytest.mark.parametrize(("path", "normal"), [
    # unreserved escapes decoded once; every other escape and the letter case kept
    ("/api/%63ontainers/%7E%41%2F%2f%25%3B%C3%A9", "/api/containers/~A%2F%2f%25%3B%C3%A9"),
    ("/api/%2563", "/api/%2563"),
    # slashes merged before dot segments are resolved
    ("/api/containers//..", "/api/"),
    ("//api///containers/", "/api/containers/"),
    # dot segments, plain and encoded, in any case; a final one leaves a trailing slash
    ("/api/containers/..", "/api/"),
    ("/api/containers/%2e%2E", "/api/"),
    ("/api/containers/.%2E/events", "/api/events"),
    ("/api/containers/%2E./x/.", "/api/x/"),
    ("/a/./b/%2e/c", "/a/b/c"),
    ("/..a/.b/..c.", "/..a/.b/..c."),
    # backslashes and parameters are not separators here: they stay as sent
    ("/api\\containers/..;x", "/api\\containers/..;x"),
    ("/", "/"),
])
def test_normal_form(path: str, normal: str) -> None:
    assert paths.normalise(path) == normal
    assert paths.normalise(normal) == normal


def test_a_path_in_normal_form_is_the_same_object() -> None:
    path = "/api/containers/abc/events"
    assert paths.normalise(path) is path


def test_lookup_cost_does_not_depend_on_the_number_of_rules() -> None:
    many: RouteTable[int] = RouteTable(Rule(f"/p{i}/x", None, i) for i in range(1000))
    assert many.match("GET", "/p999/x/y") is not None
    assert many.match("GET", "/p999") is None
    assert many.match("GET", "/p1000/x") is None
    root: RouteTable[int] = RouteTable([Rule("/", None, 0)])
    assert root.match("GET", "/anything") is not None
