"""The fence around aiohttp's internals (gateproxy/aio/): nothing private outside it,
everything private inside it declared and checked, and a proxy that keeps serving on
public APIs when a name is missing."""

from __future__ import annotations

import ast
import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import client_proto, http_writer, streams, web

from gateproxy import config
from gateproxy.aio import check, client, fastpath, server, wire
from gateproxy.aio.needs import Need, _assigned_in_init
from gateproxy.demo.standins import StandIn
from gateproxy.serve.gateway import Gateway
from tests.support.gateways import env_for
from tests.support.ports import free_port
from tests.support.processes import wait_live
from tests.support.standins import Recorder

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateproxy"
FENCE = PACKAGE / "aio"
PUBLIC_MODULES = {"aiohttp", "aiohttp.web", "aiohttp.hdrs", "aiohttp.abc", "multidict", "yarl"}
# The aiohttp classes the fence reaches into: their private names are what it may use.
INTERNAL_CLASSES = (web.RequestHandler, web.BaseSite, web.Server, web.BaseRequest,
                    web.StreamResponse, web.WebSocketResponse, client_proto.ResponseHandler,
                    streams.StreamReader, http_writer.StreamWriter,
                    aiohttp.ClientWebSocketResponse, aiohttp.ClientResponse)
ALL_NEEDS = (*server.REQUIRES, *fastpath.REQUIRES, *client.REQUIRES, *wire.REQUIRES)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _internal_names() -> set[str]:
    names: set[str] = set()
    for cls in INTERNAL_CLASSES:
        names |= {n for n in dir(cls) if _private(n)}
        names |= {n for n in _assigned_in_init(cls) if _private(n)}
    return names


def _modules(inside: bool) -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if (FENCE in p.parents) == inside]


def _own_names(tree: ast.AST) -> set[str]:
    """Private names a module defines itself: slots, methods, attributes set on `self`."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id == "self":
            own.add(node.attr)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            own |= {c.value for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return own


def test_outside_the_fence_only_public_modules_are_imported() -> None:
    offenders = []
    for path in _modules(inside=False):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.split(".")[0] in {"aiohttp", "multidict", "yarl"}:
                if node.module not in PUBLIC_MODULES or any(_private(a.name)
                                                           for a in node.names):
                    offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(ROOT)}: import {a.name}" for a in node.names
                              if a.name.startswith("aiohttp.")
                              and a.name not in PUBLIC_MODULES]
    assert offenders == []


# Documented extension points: subclassing these is public API.
EXTENSION_POINTS = {"AbstractAccessLogger"}


def test_outside_the_fence_no_aiohttp_class_is_subclassed() -> None:
    """(So that `self._x` outside the fence is always the module's own attribute.)"""
    offenders = []
    for path in _modules(inside=False):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    text = ast.unparse(base)
                    if text.startswith(("web.", "aiohttp.")) and \
                            text.rsplit(".", 1)[-1] not in EXTENSION_POINTS:
                        offenders.append(f"{path.relative_to(ROOT)}: {node.name}({text})")
    assert offenders == []


def test_outside_the_fence_no_internal_name_is_touched() -> None:
    internal = _internal_names()
    offenders = []
    for path in _modules(inside=False):
        tree = ast.parse(path.read_text())
        own = _own_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and \
                    node.attr in internal and node.attr not in own:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value in internal and _private(node.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert offenders == []


def _class_names(node: ast.ClassDef) -> set[str]:
    """Private names a class defines: its slots, methods and attributes set on self."""
    names = set()
    for child in ast.walk(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(child.name)
        elif isinstance(child, ast.Attribute) and isinstance(child.ctx, ast.Store) and \
                isinstance(child.value, ast.Name) and child.value.id == "self":
            names.add(child.attr)
        elif isinstance(child, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in child.targets):
            names |= {c.value for c in ast.walk(child.value)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return {n for n in names if _private(n)}


def test_every_internal_name_the_fence_uses_is_declared() -> None:
    """Inside the fence, every private name of aiohttp's classes that is read, written or
    overridden is a declared Need, so the start-up check covers it."""
    aiohttp_names = {cls.__name__: {n for n in dir(cls) if _private(n)}
                     | {n for n in _assigned_in_init(cls) if _private(n)}
                     for cls in INTERNAL_CLASSES}
    classes: dict[str, ast.ClassDef] = {}
    trees = {path: ast.parse(path.read_text()) for path in _modules(inside=True)}
    for tree in trees.values():
        classes.update({n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)})

    def inherited(name: str) -> set[str]:
        if name in aiohttp_names:
            return aiohttp_names[name]
        node = classes.get(name)
        if node is None:
            return set()
        bases = [ast.unparse(b).split("[")[0].rsplit(".", 1)[-1] for b in node.bases]
        return set().union(*(inherited(b) for b in bases)) if bases else set()

    # A fence class's own names are its own, unless aiohttp's base has them too.
    own = set().union(*(_class_names(node) - inherited(name)
                        for name, node in classes.items()))
    internal = set().union(*aiohttp_names.values()) - own
    declared = {need.name for need in ALL_NEEDS}
    undeclared = []
    for path, tree in trees.items():
        overrides = [(m.name, m.lineno) for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                     for m in c.body if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)
                     and m.name in inherited(c.name)]
        accesses = [(n.attr, n.lineno) for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
        undeclared += [f"{path.relative_to(ROOT)}:{line} {name}"
                       for name, line in overrides + accesses
                       if _private(name) and (name in internal or (name, line) in overrides)
                       and name not in declared]
    assert sorted(set(undeclared)) == []


def test_the_pinned_aiohttp_meets_every_need() -> None:
    assert [need.problem() for need in ALL_NEEDS if need.problem()] == []
    fence = check.inspect(fast_path=True)
    assert fence == check.Fence(limits=True, relay=True, fast_path=True)
    assert check.inspect(fast_path=False).fast_path is False


@pytest.mark.parametrize(("need", "problem"), [
    (Need(web.RequestHandler, "_renamed_away"), "is missing"),
    (Need(web.RequestHandler, "_messages", call=True), "is not callable"),
    (Need(web.StreamResponse, "__init__", param="_no_such_parameter"), "takes no parameter"),
])
def test_a_need_that_is_not_met_is_described(need: Need, problem: str) -> None:
    text = need.problem()
    assert text is not None and problem in text and need.name in text


async def test_without_the_limits_internals_the_proxy_serves_on_public_apis(
        monkeypatch: pytest.MonkeyPatch, recorder: tuple[Recorder, StandIn],
        runner: StandIn, http: aiohttp.ClientSession) -> None:
    rec, upstream = recorder
    monkeypatch.setattr(server, "REQUIRES", (*server.REQUIRES,
                                            Need(web.RequestHandler, "_renamed_away")))
    gateway = Gateway(config.load(None, env_for(upstream, runner.url)))
    assert gateway.fence == check.Fence(limits=False, relay=True, fast_path=False)
    await gateway.start()
    try:
        async with http.get(f"http://127.0.0.1:{gateway.port}/api/threads?x=1") as resp:
            assert resp.status == 200
        assert rec.seen == [("GET", "/api/threads?x=1")]
    finally:
        await gateway.stop()


# A launcher that removes one internal name the fast path needs (and aiohttp's own
# serving does not use, having bound it at import), as a newer aiohttp might.
_WITHOUT_A_NAME = (
    "import sys, aiohttp.web, aiohttp.helpers as h; del h.rfc822_formatted_time; "
    "from gateproxy.cli import main; sys.exit(main(sys.argv[1:]))")


async def test_a_missing_name_turns_the_fast_path_off_with_one_warning(
        tmp_path: Path, recorder: tuple[Recorder, StandIn],
        http: aiohttp.ClientSession) -> None:
    rec, upstream = recorder
    port = free_port()
    cfg = tmp_path / "gp.yaml"
    cfg.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"upstream: {{url: '{upstream.url}'}}\n"
        "shutdown_delay_ms: 0\n"
        "dependencies:\n  - name: docker-runner\n"
        f"    base_url: 'http://127.0.0.1:{free_port()}'\n"
        "    retry: {base_delay_ms: 50, max_delay_ms: 100, jitter_ms: 0}\n"
        "    gated_routes: [/api/containers]\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WITHOUT_A_NAME, "serve", "--config", str(cfg), cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_live(port)
        for _ in range(3):  # the fast path would take these, were it on
            async with http.get(f"http://127.0.0.1:{port}/api/containers/x") as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "docker_runner_not_ready"
            async with http.get(f"http://127.0.0.1:{port}/api/threads/1?q") as resp:
                assert resp.status == 200
        assert rec.seen == [("GET", "/api/threads/1?q")] * 3
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith(b"{")]
    warnings = [ln for ln in lines if ln["event"] == "fence_feature_off"]
    assert len(warnings) == 1, lines
    assert warnings[0]["level"] == "WARNING" and warnings[0]["feature"] == "fast_path"
    assert "rfc822_formatted_time" in warnings[0]["missing"]
    assert not [ln for ln in lines if ln["level"] in ("ERROR", "CRITICAL")
                and ln["event"] != "probe_failed"]
