"""The layers of gateproxy/ hold (docs/architecture.md, "The layers"): each rule of
scripts/layers.py on its own test, the picture docs/layers.svg current, and the core
importable without aiohttp, asked of Python itself.

A failing rule names the imports that break it (file, line, importer, imported).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gateproxy_layers_script",
                                                  ROOT / "scripts" / "layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


layers = _load_script()


@pytest.fixture(scope="module")
def code() -> Any:
    return layers.read_code(ROOT)


def broken(found: list[str]) -> str:
    return "\n".join(found)


def test_every_module_is_in_a_layer(code: Any) -> None:
    found = layers.modules_outside_layers(code)
    assert not found, broken(found)


def test_no_layer_imports_a_layer_above_it(code: Any) -> None:
    found = layers.upward_imports(code)
    assert not found, broken(found)


def test_the_fence_imports_only_its_interface_and_the_logs(code: Any) -> None:
    """Rule (a)."""
    found = layers.fence_leaks(code)
    assert not found, broken(found)


def test_at_most_two_modules_import_the_fence(code: Any) -> None:
    """Rule (b)."""
    found = layers.fence_entrances(code)
    assert not found, broken(found)


def test_importing_the_gate_loads_no_aiohttp(code: Any) -> None:
    """Rule (c), asked of Python; the message adds the static reading of what loads it."""
    done = subprocess.run(
        [sys.executable, "-c", "import gateproxy.core.gate, sys; print(sorted("
         "m for m in sys.modules if m.split('.')[0] == 'aiohttp'))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", (
        f"importing gateproxy.core.gate loads {done.stdout.strip()}\n"
        + broken(layers.aiohttp_in_core(code)))


def test_no_core_module_loads_aiohttp(code: Any) -> None:
    """Rule (c) for every module of core, read from the code."""
    found = layers.aiohttp_in_core(code)
    assert not found, broken(found)


def test_no_import_cycles(code: Any) -> None:
    """Rule (d), TYPE_CHECKING imports and imports inside functions included."""
    found = layers.import_cycles(code)
    assert not found, broken(found)


def test_the_longest_import_chain_has_at_most_10_modules(code: Any) -> None:
    """Rule (e)."""
    chain = layers.longest_chain(code)
    assert len(chain) <= layers.MAX_CHAIN == 10, (
        f"{len(chain)} modules: " + " -> ".join(chain))


def test_no_folder_holds_more_than_12_modules(code: Any) -> None:
    """Rule (f)."""
    found = layers.oversized_folders(code)
    assert layers.MAX_FOLDER == 12
    assert not found, broken(found)


def test_the_picture_is_current(code: Any) -> None:
    picture = ROOT / layers.PICTURE
    assert picture.read_text(encoding="utf-8") == layers.picture(code), (
        "docs/layers.svg is not the picture of the code as it is: "
        "run `.venv/bin/python scripts/layers.py --picture`")


# --- the script itself, on a made-up gateproxy/ ----------------------------------------------

def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "gateproxy" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_every_kind_of_import_is_read(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "__init__.py": "",
        "logs.py": "",
        "core/__init__.py": "",
        "core/model.py": "",
        "core/gate.py": (
            "from typing import TYPE_CHECKING\n"
            "from gateproxy.core import model\n"           # a module through its package
            "from . import paths\n"                        # relative
            "from gateproxy.logs import log\n"              # a name: the module it is in
            "if TYPE_CHECKING:\n"
            "    from gateproxy.monitor.loop import Watch\n"
            "def later() -> None:\n"
            "    import gateproxy.config.loader\n"),
        "core/paths.py": "from .model import X\nimport aiohttp\n",
        "config/__init__.py": "from gateproxy.config.loader import load\n",
        "config/loader.py": "",
        "monitor/__init__.py": "",
        "monitor/loop.py": "",
    })
    code = layers.read_code(root)
    gate = {(imp.target, imp.when) for imp in code.imports if imp.source == "gateproxy.core.gate"}
    assert gate == {("gateproxy.core.model", "load"), ("gateproxy.core.paths", "load"),
                    ("gateproxy.logs", "load"), ("gateproxy.monitor.loop", "typing"),
                    ("gateproxy.config.loader", "call")}
    assert ("gateproxy.config", "gateproxy.config.loader") in {
        (imp.source, imp.target) for imp in code.imports}
    assert layers.upward_imports(code) == [
        "gateproxy/core/gate.py:8: gateproxy.core.gate imports gateproxy.config.loader"
        " [in a function]: core is below config",
        "gateproxy/core/gate.py:6: gateproxy.core.gate imports gateproxy.monitor.loop"
        " [TYPE_CHECKING]: core is below monitor"]
    assert [line.split(":")[0] for line in layers.aiohttp_in_core(code)] == [
        "gateproxy.core.gate loads aiohttp", "gateproxy.core.paths loads aiohttp"]
    assert layers.longest_chain(code) == [
        "gateproxy.core.gate", "gateproxy.core.paths", "gateproxy.core.model"]


def test_the_exit_code_says_whether_a_rule_is_broken(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    files = {"__init__.py": "", "logs.py": "", "core/__init__.py": "",
             "core/model.py": "", "serve/__init__.py": "",
             "serve/gateway.py": "from gateproxy.core import model\n"}
    assert layers.main(["--root", str(_tree(tmp_path / "good", files))]) == 0
    files["core/model.py"] = "from gateproxy.serve import gateway\n"
    assert layers.main(["--root", str(_tree(tmp_path / "bad", files))]) == 1
    out = capsys.readouterr().out
    assert "gateproxy/core/model.py:1: gateproxy.core.model imports gateproxy.serve.gateway" in out
    assert "a cycle among 2 modules" in out
