"""gateproxy uses aiohttp's public API only, read from its source with `ast`: no module
imports or reaches a name of aiohttp (or of one of its submodules) that starts with `_`,
nor anything of the submodules aiohttp does not document; and the proxy port's own HTTP
core (gateproxy/engine/) imports no aiohttp at all. (The fence that once held aiohttp's
internals, gateproxy/aio/, is gone: nothing may need them again.)"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateproxy"
ENGINE = PACKAGE / "engine"

# aiohttp's modules that are not part of its documented API: whatever they hold may change
# in any release.
UNDOCUMENTED: Final = frozenset({
    "aiohttp.http_parser", "aiohttp.http_writer", "aiohttp.client_proto",
    "aiohttp.base_protocol", "aiohttp.streams", "aiohttp.helpers",
    "aiohttp.http_exceptions", "aiohttp.web_protocol"})


def _is_aiohttp(module: str) -> bool:
    return module == "aiohttp" or module.startswith("aiohttp.")


def _private(name: str) -> bool:
    """`_x` (and `__x`), but not a dunder such as `__version__`."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _problem(dotted: str) -> str | None:
    """What is wrong with naming `dotted` (aiohttp, or a name under it), if anything."""
    parts = dotted.split(".")
    if any(_private(part) for part in parts):
        return "a private name"
    for end in range(2, len(parts) + 1):
        if ".".join(parts[:end]) in UNDOCUMENTED:
            return f"undocumented module {'.'.join(parts[:end])}"
    return None


def _dotted(node: ast.expr) -> tuple[str, list[str]] | None:
    """`a.b.c` as ("a", ["b", "c"]); None when the chain does not start at a name."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id, attrs[::-1]) if isinstance(node, ast.Name) else None


def _imported_by_call(node: ast.AST) -> str | None:
    """The module of `importlib.import_module("m")` or `__import__("m")`, if `node` is one."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else \
        func.id if isinstance(func, ast.Name) else ""
    first = node.args[0]
    if name in ("import_module", "__import__") and isinstance(first, ast.Constant) \
            and isinstance(first.value, str):
        return first.value
    return None


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Each use of aiohttp in `source` that is not its public API: "file:line: what"."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    aliases: dict[str, str] = {}  # a local name -> the aiohttp name it is bound to

    def report(node: ast.AST, dotted: str, how: str) -> None:
        problem = _problem(dotted)
        if problem is not None:
            found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {how} {dotted}: {problem}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_aiohttp(alias.name):
                    report(node, alias.name, "imports")
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases[alias.name.split(".")[0]] = "aiohttp"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and _is_aiohttp(node.module):
            report(node, node.module, "imports from")
            for alias in node.names:
                if alias.name == "*":
                    continue
                name = f"{node.module}.{alias.name}"
                report(node, name, "imports")
                aliases[alias.asname or alias.name] = name
    # Each chain `a.b.c` once, whole: not again as its prefix `a.b`.
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain is not None and chain[0] in aliases and id(node) not in inner:
                report(node, ".".join([aliases[chain[0]], *chain[1]]), "uses")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str):
            target = node.args[0]
            chain = _dotted(target) if isinstance(target, ast.Name | ast.Attribute) else None
            if chain is not None and chain[0] in aliases:
                report(node, ".".join([aliases[chain[0]], *chain[1], node.args[1].value]),
                       f"{node.func.id}s")
        elif (called := _imported_by_call(node)) is not None and _is_aiohttp(called):
            report(node, called, "imports")
    return sorted(set(found), key=lambda line: (line.split(":")[0], int(line.split(":")[1])))


def aiohttp_imports(source: str, filename: str = "<source>") -> list[str]:
    """Every import of aiohttp (or one of its submodules) in `source`, in any spelling."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (called := _imported_by_call(node)) is not None:
            names = [called]
        line = getattr(node, "lineno", 0)
        found += [f"{filename}:{line}: {name}" for name in names if _is_aiohttp(name)]
    return found


def scan(root: Path) -> list[str]:
    """`violations` over every module under `root`."""
    return [line for path in sorted(root.rglob("*.py"))
            for line in violations(path.read_text(encoding="utf-8"),
                                   str(path.relative_to(root.parent)))]


# --- the check can fail -------------------------------------------------------------------

PLANTED = '''\
import aiohttp
import aiohttp.http_parser
import aiohttp.web as w
from aiohttp import web, _private_thing
from aiohttp import streams
from aiohttp.helpers import reify
from aiohttp.web import _run_app
from aiohttp.client_proto import ResponseHandler as RH
import importlib

a = aiohttp.ClientSession
b = aiohttp._helpers
c = web.RequestHandler._messages
d = w.BaseSite._runner
e = getattr(web.Request, "_payload")
f = importlib.import_module("aiohttp.web_protocol")
g = aiohttp.helpers.rfc822_formatted_time
h = web.Response(text="fine").__class__
i = aiohttp.__version__
from aiohttp import ClientTimeout, hdrs
j = hdrs.CONTENT_TYPE
'''


def test_the_check_finds_each_kind_of_violation() -> None:
    lines = {int(line.split(":")[1]) for line in violations(PLANTED)}
    assert lines == {2, 4, 5, 6, 7, 8, 12, 13, 14, 15, 16, 17}, violations(PLANTED)


def test_the_check_passes_public_use() -> None:
    clean = ("import aiohttp\nfrom aiohttp import web, hdrs\n"
             "s = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))\n"
             "r = web.Response(text='x')\nn = hdrs.CONTENT_TYPE\nv = aiohttp.__version__\n"
             "class Mine:\n    def f(self):\n        return self._own\n")
    assert violations(clean) == []


def test_a_planted_violation_in_a_package_fails_the_scan(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "ok.py").write_text("from aiohttp import web\nx = web.Response\n")
    assert scan(package) == []
    (package / "sub" / "bad.py").write_text("from aiohttp import web\n"
                                            "x = web.RequestHandler._keepalive\n")
    assert scan(package) == [
        "pkg/sub/bad.py:2: uses aiohttp.web.RequestHandler._keepalive: a private name"]


@pytest.mark.parametrize("source", [
    "import aiohttp\n", "import aiohttp.web\n", "from aiohttp import web\n",
    "from aiohttp.web import Response\n", "import importlib\nimportlib.import_module('aiohttp')\n",
    "def f():\n    import aiohttp as a\n",
])
def test_every_spelling_of_an_aiohttp_import_is_seen(source: str) -> None:
    assert len(aiohttp_imports(source)) == 1, source
    assert aiohttp_imports("import aiohttp_jinja2\nfrom multidict import CIMultiDict\n") == []


# --- gateproxy ----------------------------------------------------------------------------

def test_no_module_of_gateproxy_reaches_past_aiohttps_public_api() -> None:
    assert any(PACKAGE.rglob("*.py"))
    found = scan(PACKAGE)
    assert found == [], "aiohttp's private or undocumented names:\n" + "\n".join(found)


def test_the_http_core_imports_no_aiohttp() -> None:
    modules = sorted(ENGINE.rglob("*.py"))
    assert {p.stem for p in modules} >= {"phases", "flow", "exchange", "connection", "carry",
                                         "upstream", "tunnel", "wire", "listener"}
    found = [line for path in modules
             for line in aiohttp_imports(path.read_text(encoding="utf-8"),
                                         str(path.relative_to(ROOT)))]
    assert found == [], "gateproxy/engine/ imports aiohttp:\n" + "\n".join(found)
