"""The test suite's own layout, read from its source with `ast`: helpers live in
tests/support/, conftest.py files hold fixtures and hooks only, and no test module imports
another test module or a conftest (a test module is what pytest collects, not a library:
importing one runs its module-level code and ties two tests' fates together)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
SUPPORT = TESTS / "support"


def sources() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "node_modules" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, module) for every module the `source` of `module` imports, relative imports
    resolved; for `from package import name` both `package` and `package.name` (the name
    may be a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, name
            for alias in node.names:
                yield node.lineno, f"{name}.{alias.name}"


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    return imported(path.read_text(), module_name(path), path.name == "__init__.py")


def is_test_module(module: str) -> bool:
    """tests.conftest, any tests.<dir>.conftest, or a tests.<dir>.test_* module."""
    parts = module.split(".")
    if parts[0] != "tests" or len(parts) < 2:
        return False
    return parts[-1] == "conftest" or (parts[1] != "support" and parts[-1].startswith("test_"))


def test_the_walk_sees_every_kind_of_import() -> None:
    """The check can fail: each spelling of a forbidden import is found, and a support
    import is not."""
    source = ("import tests.conftest\n"
              "from tests.conftest import free_port\n"
              "from tests import conftest\n"
              "from tests.unit.test_routes import GATED_SPELLINGS\n"
              "from tests.process import test_process\n"
              "from ..hostile.test_hostile_paths import CORPUS\n"
              "from . import test_gateway\n"
              "from tests.support.ports import free_port\n"
              "from ..support import rawclient\n")
    found = {line for line, module in imported(source, "tests.integration.test_probe")
             if is_test_module(module)}
    assert found == {1, 2, 3, 4, 5, 6, 7}


def test_no_test_module_or_conftest_is_imported() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: imports {module}"
                 for path in sources() for line, module in imports_of(path)
                 if is_test_module(module)]
    assert offenders == [], "move what is shared into tests/support/:\n" + "\n".join(offenders)


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return ast.unparse(target) in ("pytest.fixture", "fixture")


def test_conftest_files_define_fixtures_and_hooks_only() -> None:
    stray = []
    for path in TESTS.rglob("conftest.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if not (node.name.startswith("pytest_")
                        or any(_is_fixture(d) for d in node.decorator_list)):
                    stray.append(f"{path.relative_to(ROOT)}:{node.lineno}: def {node.name}")
            elif isinstance(node, ast.ClassDef):
                stray.append(f"{path.relative_to(ROOT)}:{node.lineno}: class {node.name}")
    assert stray == [], "helpers belong in tests/support/:\n" + "\n".join(stray)


def test_every_support_module_says_what_it_holds() -> None:
    missing = [str(p.relative_to(ROOT)) for p in sorted(SUPPORT.rglob("*.py"))
               if p.name != "__init__.py" and "node_modules" not in p.parts
               and not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []


def test_there_is_one_mechanic_and_no_switch_for_it() -> None:
    """The proxy port has one HTTP core (gateproxy/engine/): no fixture, parameter or
    environment picks a mechanic, so every behaviour test runs once. The removed setting
    (`fast_path`, GATEPROXY_FAST_PATH) is spelled only by the config tests that check it
    is ignored with a warning."""
    spelled = [str(p.relative_to(ROOT)) for p in sources()
               if "GATEPROXY_FAST_PATH" in p.read_text() and p != Path(__file__).resolve()]
    assert spelled == ["tests/unit/test_config.py"]
    switches = [f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}"
                for path in sources() for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and (node.name in ("fast_path", "fast_path_env")
                     or "fast_path" in {a.arg for a in (*node.args.posonlyargs,
                                                        *node.args.args,
                                                        *node.args.kwonlyargs)})]
    assert switches == [], "a mechanic switch is back:\n" + "\n".join(switches)
