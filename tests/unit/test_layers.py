"""The layers of gateproxy/ hold (docs/architecture.md, "The layers"): each rule of
scripts/layers.py on its own test, the picture docs/layers.svg current, and the core and
the proxy port's HTTP core (engine/) importable without aiohttp, asked of Python itself.

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


def _aiohttp_loaded_by(modules: list[str]) -> str:
    """The aiohttp modules in sys.modules after importing `modules`, asked of Python."""
    done = subprocess.run(
        [sys.executable, "-c", f"import sys, {', '.join(modules)}; print(sorted("
         "m for m in sys.modules if m.split('.')[0] == 'aiohttp'))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_no_engine_module_imports_aiohttp(code: Any) -> None:
    """Rule (a), read from the code: not at module level, not in a function, not under
    TYPE_CHECKING; and nothing importing one loads imports it either."""
    assert any(layers.layer_of(m) == layers.ENGINE for m in code.files)
    found = layers.aiohttp_in_engine(code)
    assert not found, broken(found)


def test_importing_the_engine_loads_no_aiohttp(code: Any) -> None:
    """Rule (a), asked of Python."""
    engine = sorted(m for m in code.files if layers.layer_of(m) == layers.ENGINE)
    loaded = _aiohttp_loaded_by(engine)
    assert loaded == "[]", f"importing gateproxy.engine loads {loaded}\n" + broken(
        layers.aiohttp_in_engine(code))


def test_importing_the_gate_loads_no_aiohttp(code: Any) -> None:
    """Rule (b), asked of Python; the message adds the static reading of what loads it."""
    loaded = _aiohttp_loaded_by(["gateproxy.core.gate"])
    assert loaded == "[]", (f"importing gateproxy.core.gate loads {loaded}\n"
                            + broken(layers.aiohttp_in_core(code)))


def test_no_core_module_loads_aiohttp(code: Any) -> None:
    """Rule (b) for every module of core, read from the code."""
    found = layers.aiohttp_in_core(code)
    assert not found, broken(found)


def test_no_import_cycles(code: Any) -> None:
    """Rule (c), TYPE_CHECKING imports and imports inside functions included."""
    found = layers.import_cycles(code)
    assert not found, broken(found)


def test_the_longest_import_chain_has_at_most_10_modules(code: Any) -> None:
    """Rule (d)."""
    chain = layers.longest_chain(code)
    assert len(chain) <= layers.MAX_CHAIN == 10, (
        f"{len(chain)} modules: " + " -> ".join(chain))


def test_no_folder_holds_more_than_12_modules(code: Any) -> None:
    """Rule (e)."""
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


def test_the_engine_rule_sees_aiohttp_however_it_is_reached(tmp_path: Path) -> None:
    """Rule (a) can fail: an engine module importing aiohttp in a function or under
    TYPE_CHECKING, or loading a module of another layer that imports it."""
    files = {"__init__.py": "", "logs.py": "", "core/__init__.py": "",
             "core/answers.py": "", "upstream/__init__.py": "",
             "upstream/interface.py": "", "engine/__init__.py": "",
             "engine/wire.py": "from gateproxy.core import answers\n"}
    assert layers.aiohttp_in_engine(layers.read_code(_tree(tmp_path / "good", files))) == []
    files.update({
        "engine/flow.py": "def later() -> None:\n    import aiohttp\n",
        "engine/tunnel.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from aiohttp import web\n"),
        "upstream/interface.py": "import aiohttp\n",
        "engine/upstream.py": "from gateproxy.upstream import interface\n",
    })
    found = layers.aiohttp_in_engine(layers.read_code(_tree(tmp_path / "bad", files)))
    assert found == [
        "gateproxy/engine/flow.py:2: gateproxy.engine.flow imports aiohttp [in a function]:"
        " engine/ imports no aiohttp",
        "gateproxy/engine/tunnel.py:3: gateproxy.engine.tunnel imports aiohttp"
        " [TYPE_CHECKING]: engine/ imports no aiohttp",
        "gateproxy.engine.upstream loads aiohttp: gateproxy.engine.upstream ->"
        " gateproxy.upstream.interface; gateproxy/upstream/interface.py:1:"
        " gateproxy.upstream.interface imports aiohttp"], found
