"""The layers of gateproxy/, read from its source: which module imports which, the rules
of docs/architecture.md ("The layers") checked, and the picture drawn.

    .venv/bin/python scripts/layers.py            # modules, layer graph, violations, chain
    .venv/bin/python scripts/layers.py --picture  # rewrite docs/layers.svg

Without `--picture` the exit code is 1 when a rule is broken, 0 otherwise (2: a file of
gateproxy/ does not parse).

Every `import gateproxy...` and `from gateproxy... import ...` counts (relative ones
too), wherever it is: at module level, inside a function, under `if TYPE_CHECKING:`.
`from gateproxy.x import name` is an import of the module `gateproxy.x.name` when there is
one, else of `gateproxy.x`; a package's `__init__.py` is the module named by the package.
The rules:

- layer order: a module imports its own layer and the layers below it, never one above.
  Below every layer: `gateproxy` (the version) and `gateproxy.logs`. Above every layer:
  `gateproxy.cli` and `gateproxy.__main__`. Every other module is in a layer's folder.
- the engine loads no aiohttp (a): no module of `engine/` (the proxy port's own HTTP
  core) imports aiohttp, wherever the import is (in a function, under `TYPE_CHECKING`),
  and what importing one loads (read as in (b)) imports no aiohttp either.
- core loads no aiohttp (b): what importing a `core` module loads (module-level imports
  outside `TYPE_CHECKING`, and the packages of the modules loaded) imports no aiohttp.
  A static reading: tests/unit/test_layers.py asks Python itself as well.
- no import cycles (c), every import above included.
- the longest chain (d): the longest simple path in the import graph, at most 10 modules.
- folder size (e): no folder of gateproxy/ holds more than 12 modules.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import sys
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gateproxy"
PICTURE = Path("docs") / "layers.svg"

# The layers, bottom to top: each a folder of gateproxy/.
LAYERS: tuple[str, ...] = ("core", "config", "monitor", "upstream", "http_rules", "engine",
                           "views", "serve", "workers", "demo")
BASE = "base"    # below every layer, importable by all
ENTRY = "entry"  # the entry point, above every layer: may import anything
ORDER: tuple[str, ...] = (BASE, *LAYERS, ENTRY)
BASE_MODULES = frozenset({PACKAGE, f"{PACKAGE}.logs"})
ENTRY_MODULES = frozenset({f"{PACKAGE}.cli", f"{PACKAGE}.__main__"})

ENGINE = "engine"  # the proxy port's HTTP core: no aiohttp
PURE = "core"
MAX_CHAIN = 10
MAX_FOLDER = 12

# When an import runs.
LOAD = "load"      # when the module is imported (module level, a class body)
CALL = "call"      # when a function runs
TYPING = "typing"  # never: under `if TYPE_CHECKING:`
WHEN_NOTE = {LOAD: "", CALL: " [in a function]", TYPING: " [TYPE_CHECKING]"}


@dataclass(frozen=True, order=True)
class Import:
    """One module's import of another (of gateproxy), or of a library (its top name)."""

    source: str
    target: str
    line: int
    when: str


@dataclass(frozen=True, repr=False)
class Code:
    """gateproxy/ as read from its files."""

    root: Path
    files: Mapping[str, Path]      # module -> its file, relative to root
    imports: tuple[Import, ...]    # of gateproxy modules, sorted
    libraries: tuple[Import, ...]  # of anything else, by top-level name, sorted

    def __repr__(self) -> str:
        return (f"<Code of {self.root / PACKAGE}: {len(self.files)} modules, "
                f"{len(self.imports)} imports between them>")

    def where(self, imp: Import) -> str:
        """`path:line: source imports target`, as a violation names an import."""
        return (f"{self.files[imp.source].as_posix()}:{imp.line}: {imp.source} imports "
                f"{imp.target}{WHEN_NOTE[imp.when]}")


# --- reading the code ----------------------------------------------------------------------

def module_name(path: Path) -> str:
    """gateproxy/core/gate.py -> gateproxy.core.gate; a package's __init__.py -> the package."""
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_statements(node: ast.AST, when: str = LOAD
                       ) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, when
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for statement in node.body:
            yield from _import_statements(statement, TYPING)
        for statement in node.orelse:
            yield from _import_statements(statement, when)
        return
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and when == LOAD:
        when = CALL
    for child in ast.iter_child_nodes(node):
        yield from _import_statements(child, when)


def _known_prefix(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a module of ours."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _targets(statement: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             modules: Mapping[str, Path]) -> Iterator[str]:
    """The dotted names a statement imports: our modules resolved, libraries as written."""
    if isinstance(statement, ast.Import):
        for alias in statement.names:
            yield _known_prefix(alias.name, modules) or alias.name
        return
    if statement.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base_parts = package[:len(package) - (statement.level - 1)]
        if statement.module:
            base_parts.append(statement.module)
        base = ".".join(base_parts)
    else:
        base = statement.module or ""
    for alias in statement.names:
        submodule = f"{base}.{alias.name}"
        if submodule in modules:
            yield submodule
        else:
            yield _known_prefix(base, modules) or base


def read_code(root: Path = ROOT) -> Code:
    """Every module of gateproxy/ under root and every import in it."""
    files = {module_name(path.relative_to(root)): path.relative_to(root)
             for path in sorted((root / PACKAGE).rglob("*.py"))}
    ours: set[Import] = set()
    libraries: set[Import] = set()
    for module, path in files.items():
        tree = ast.parse((root / path).read_text(encoding="utf-8"), filename=str(path))
        for statement, when in _import_statements(tree):
            for target in _targets(statement, module, path.name == "__init__.py", files):
                top = target.split(".")[0]
                if top == PACKAGE:
                    if target != module:
                        ours.add(Import(module, target, statement.lineno, when))
                elif top:
                    libraries.add(Import(module, top, statement.lineno, when))
    return Code(root, files, tuple(sorted(ours)), tuple(sorted(libraries)))


# --- the layers ----------------------------------------------------------------------------

def layer_of(module: str) -> str | None:
    """The layer a module belongs to (BASE, a folder of LAYERS, ENTRY), None if none."""
    if module in BASE_MODULES:
        return BASE
    if module in ENTRY_MODULES:
        return ENTRY
    parts = module.split(".")
    if len(parts) > 1 and parts[0] == PACKAGE and parts[1] in LAYERS:
        return parts[1]
    return None


def _level(module: str) -> int:
    layer = layer_of(module)
    return ORDER.index(layer) if layer else -1


def modules_per_layer(code: Code) -> dict[str, list[str]]:
    """Layer -> its modules, sorted; every layer of ORDER present, even when empty."""
    layers: dict[str, list[str]] = {layer: [] for layer in ORDER}
    for module in code.files:
        layer = layer_of(module)
        if layer:
            layers[layer].append(module)
    return layers


def layer_graph(code: Code) -> dict[tuple[str, str], int]:
    """(importing layer, imported layer) -> how many module pairs import that way."""
    pairs = {(imp.source, imp.target) for imp in code.imports}
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for source, target in pairs:
        source_layer, target_layer = layer_of(source), layer_of(target)
        if source_layer and target_layer:
            counts[source_layer, target_layer] += 1
    return dict(sorted(counts.items(), key=lambda item: (-ORDER.index(item[0][0]),
                                                         -ORDER.index(item[0][1]))))


def _graph(code: Code) -> dict[str, list[str]]:
    graph: dict[str, set[str]] = {module: set() for module in code.files}
    for imp in code.imports:
        graph[imp.source].add(imp.target)
    return {module: sorted(targets) for module, targets in graph.items()}


# --- the rules: each returns its violations, one line each, empty when kept ---------------

def modules_outside_layers(code: Code) -> list[str]:
    """Modules that belong to no layer (every module must have one)."""
    return [f"{path.as_posix()}: {module} is in no layer (the layers: {', '.join(LAYERS)})"
            for module, path in code.files.items() if layer_of(module) is None]


def upward_imports(code: Code) -> list[str]:
    """Imports of a module in a layer above the importer's."""
    return [f"{code.where(imp)}: {layer_of(imp.source)} is below {layer_of(imp.target)}"
            for imp in code.imports
            if layer_of(imp.source) and layer_of(imp.target)
            and _level(imp.target) > _level(imp.source)]


def _loaded_with(code: Code, module: str) -> dict[str, str | None]:
    """What importing a module loads: module -> the module that loaded it (None: itself).

    Module-level imports outside TYPE_CHECKING, and the package of every module loaded
    (its `__init__.py` runs first)."""
    runs: dict[str, list[str]] = defaultdict(list)
    for imp in code.imports:
        if imp.when == LOAD:
            runs[imp.source].append(imp.target)
    loaded: dict[str, str | None] = {module: None}
    queue = deque([module])
    while queue:
        current = queue.popleft()
        parts = current.split(".")
        packages = [".".join(parts[:n]) for n in range(1, len(parts))]
        for target in [*packages, *runs[current]]:
            if target in code.files and target not in loaded:
                loaded[target] = current
                queue.append(target)
    return loaded


def _is_aiohttp(library: str) -> bool:
    return library == "aiohttp" or library.startswith("aiohttp_")


def _loads_aiohttp(code: Code, layer: str, *, besides: str | None = None) -> list[str]:
    """Each module of `layer` whose import loads aiohttp, with the chain that does; with
    `besides`, only chains through a module outside that layer."""
    found = []
    for module in code.files:
        if layer_of(module) != layer:
            continue
        loaded = _loaded_with(code, module)
        culprits = [imp for imp in code.libraries
                    if imp.source in loaded and imp.when == LOAD and _is_aiohttp(imp.target)
                    and (besides is None or layer_of(imp.source) != besides)]
        if culprits:
            first = min(culprits, key=lambda imp: (len(_chain_to(loaded, imp.source)), imp))
            chain = " -> ".join(_chain_to(loaded, first.source))
            found.append(f"{module} loads aiohttp: {chain}; {code.where(first)}")
    return found


def aiohttp_in_engine(code: Code) -> list[str]:
    """Rule (a), read statically: no engine module imports aiohttp, and importing one
    loads none."""
    found = [f"{code.where(imp)}: {ENGINE}/ imports no aiohttp"
             for imp in code.libraries
             if layer_of(imp.source) == ENGINE and _is_aiohttp(imp.target)]
    return found + _loads_aiohttp(code, ENGINE, besides=ENGINE)


def aiohttp_in_core(code: Code) -> list[str]:
    """Rule (b), read statically: importing a core module loads no aiohttp."""
    return _loads_aiohttp(code, PURE)


def _chain_to(loaded: Mapping[str, str | None], module: str) -> list[str]:
    chain = [module]
    while (parent := loaded[chain[-1]]) is not None:
        chain.append(parent)
    return chain[::-1]


def strongly_connected(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def import_cycles(code: Code) -> list[str]:
    """Rule (c): no cycles; each group of modules that import each other, with one cycle."""
    graph = _graph(code)
    found = []
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        members = set(component)
        start = component[0]
        # The shortest way back to start, inside the component.
        came_from: dict[str, str] = {}
        queue = deque([start])
        while queue and start not in came_from:
            current = queue.popleft()
            for target in graph[current]:
                if target in members and target not in came_from:
                    came_from[target] = current
                    queue.append(target)
        cycle = [start]
        while (previous := came_from[cycle[-1]]) != start:
            cycle.append(previous)
        cycle = [start, *cycle[:0:-1], start]
        lines = [next(code.where(imp) for imp in code.imports
                      if imp.source == source and imp.target == target)
                 for source, target in itertools.pairwise(cycle)]
        found.append(f"a cycle among {len(component)} modules ({', '.join(component)}): "
                     + " -> ".join(cycle))
        found += [f"  {line}" for line in lines]
    return found


def longest_chain(code: Code) -> list[str]:
    """The longest simple path in the import graph (the first such path in sorted order)."""
    graph = _graph(code)
    if all(len(c) == 1 for c in strongly_connected(graph)) and not any(
            m in graph[m] for m in graph):
        best: dict[str, list[str]] = {}

        def from_(node: str) -> list[str]:
            if node not in best:
                tails = [from_(target) for target in graph[node]]
                best[node] = [node, *min(tails, key=lambda t: (-len(t), t), default=[])]
            return best[node]

        paths = [from_(node) for node in sorted(graph)]
    else:  # a cycle: every simple path (the graph is small)
        paths = []

        def walk(path: list[str], seen: set[str]) -> None:
            paths.append(list(path))
            for target in graph[path[-1]]:
                if target not in seen:
                    path.append(target)
                    seen.add(target)
                    walk(path, seen)
                    seen.discard(target)
                    path.pop()

        for node in sorted(graph):
            walk([node], {node})
    return min(paths, key=lambda p: (-len(p), p), default=[])


def chain_too_long(code: Code) -> list[str]:
    """Rule (d): the longest import chain has at most MAX_CHAIN modules."""
    chain = longest_chain(code)
    if len(chain) <= MAX_CHAIN:
        return []
    return [f"the longest import chain has {len(chain)} modules, at most {MAX_CHAIN}: "
            + " -> ".join(chain)]


def folder_sizes(code: Code) -> dict[str, list[str]]:
    """Folder of gateproxy/ (posix path) -> its modules' file names, sorted."""
    folders: dict[str, list[str]] = defaultdict(list)
    for path in code.files.values():
        folders[path.parent.as_posix()].append(path.name)
    return {folder: sorted(names) for folder, names in sorted(folders.items())}


def oversized_folders(code: Code) -> list[str]:
    """Rule (e): no folder holds more than MAX_FOLDER modules."""
    return [f"{folder}/ holds {len(names)} modules, at most {MAX_FOLDER}: {', '.join(names)}"
            for folder, names in folder_sizes(code).items() if len(names) > MAX_FOLDER]


RULES = {
    "every module in a layer": modules_outside_layers,
    "layer order": upward_imports,
    "(a) the engine loads no aiohttp": aiohttp_in_engine,
    "(b) core loads no aiohttp": aiohttp_in_core,
    "(c) no import cycles": import_cycles,
    f"(d) import chains of at most {MAX_CHAIN} modules": chain_too_long,
    f"(e) folders of at most {MAX_FOLDER} modules": oversized_folders,
}


def violations(code: Code) -> dict[str, list[str]]:
    """Rule -> its violations, for every rule (empty list: kept)."""
    return {rule: check(code) for rule, check in RULES.items()}


# --- the report ----------------------------------------------------------------------------

def _short(module: str) -> str:
    return module.removeprefix(f"{PACKAGE}.") if module != PACKAGE else PACKAGE


def report(code: Code) -> str:
    """What the script prints: layers, the layer graph, violations, the longest chain."""
    lines = [f"{PACKAGE}/: {len(code.files)} modules, {len(code.imports)} imports of its own"
             " modules", "", "Modules per layer (top to bottom):"]
    for layer, modules in reversed(modules_per_layer(code).items()):
        lines.append(f"  {layer:<11} {len(modules):>2}  {', '.join(map(_short, modules))}")
    lines += ["", "Imports between layers (module pairs; ! = a layer importing one above it):"]
    for (source, target), count in layer_graph(code).items():
        mark = "!" if ORDER.index(target) > ORDER.index(source) else " "
        lines.append(f"  {mark} {source:<11} -> {target:<11} {count:>3}")
    found = violations(code)
    broken = sum(bool(v) for v in found.values())
    lines += ["", f"Rules: {len(found) - broken} kept, {broken} broken"]
    for rule, problems in found.items():
        lines.append(f"  {'BROKEN' if problems else 'kept  '}  {rule}"
                     + (f" ({sum(not p.startswith('  ') for p in problems)})" if problems else ""))
        lines += [f"      {problem}" for problem in problems]
    chain = longest_chain(code)
    lines += ["", f"Longest import chain: {len(chain)} modules (at most {MAX_CHAIN})"]
    lines += [f"  {'   ' if n == 0 else '-> '}{module}" for n, module in enumerate(chain)]
    return "\n".join(lines) + "\n"


# --- the picture ---------------------------------------------------------------------------

FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'
BOX_X, BOX_WIDTH, COLUMNS, ROW = 20, 540, 3, 17
CELL, MATRIX_X = 30, 610
FILL = {BASE: "#eeeeee", ENTRY: "#eeeeee", ENGINE: "#fde2c4", PURE: "#d8ecd8"}
LAYER_FILL = "#dde8f5"


def _text(x: float, y: float, content: str, extra: str = "") -> str:
    return f'<text x="{x:g}" y="{y:g}"{extra}>{escape(content)}</text>'


def picture(code: Code) -> str:
    """docs/layers.svg: a box per layer, bottom to top, with its modules; beside it, the
    matrix of imports between layers (row imports column; red: upward)."""
    layers = modules_per_layer(code)
    top_down = list(reversed(ORDER))
    body: list[str] = []

    # The boxes, top to bottom on the page (the top layer first).
    y = 50.0
    for layer in top_down:
        names = sorted(code.files[m].relative_to(code.files[m].parent).as_posix()
                       for m in layers[layer])
        rows = max(1, -(-len(names) // COLUMNS))
        height = 26 + rows * ROW
        number = f"{ORDER.index(layer)}. " if layer in LAYERS else ""
        title = {BASE: f"below all: {PACKAGE}/__init__.py, logs.py",
                 ENTRY: "the entry point: may import anything"}.get(
            layer, f"{PACKAGE}/{layer}/")
        body.append(f'<rect x="{BOX_X}" y="{y:g}" width="{BOX_WIDTH}" height="{height}" '
                    f'rx="6" fill="{FILL.get(layer, LAYER_FILL)}" stroke="#555"/>')
        body.append(_text(BOX_X + 10, y + 17, f"{number}{layer}", ' font-weight="bold"'))
        body.append(_text(BOX_X + 130, y + 17, f"{title} ({len(names)} modules)",
                          ' fill="#444"'))
        for n, name in enumerate(names):
            column, row = n % COLUMNS, n // COLUMNS
            body.append(_text(BOX_X + 14 + column * (BOX_WIDTH - 20) / COLUMNS,
                              y + 36 + row * ROW, name, ' font-family="monospace"'))
        y += height + 8
    boxes_bottom = y

    # The matrix: rows import columns, both top layer first.
    graph = layer_graph(code)
    top = 130.0
    body.append(_text(MATRIX_X, 40, "Imports between layers", ' font-weight="bold"'))
    body.append(_text(MATRIX_X, 58, "row imports column: how many module pairs", ' fill="#444"'))
    left = MATRIX_X + 80
    for n, layer in enumerate(top_down):
        x = left + n * CELL + CELL / 2
        body.append(_text(x, top - 6, layer,
                          f' transform="rotate(-60 {x:g} {top - 6:g})" font-size="11"'))
        body.append(_text(MATRIX_X, top + n * CELL + CELL / 2 + 4, layer, ' font-size="11"'))
    for row, source in enumerate(top_down):
        for column, target in enumerate(top_down):
            count = graph.get((source, target), 0)
            if column < row:
                fill = "#f4b6b6" if count else "#ffffff"  # imports a layer above: wrong
            elif column == row:
                fill = "#e4e4e4"
            else:
                fill = "#cfe3cf" if count else "#ffffff"
            x, cell_y = left + column * CELL, top + row * CELL
            body.append(f'<rect x="{x:g}" y="{cell_y:g}" width="{CELL}" height="{CELL}" '
                        f'fill="{fill}" stroke="#bbb"/>')
            if count:
                body.append(_text(x + CELL / 2, cell_y + CELL / 2 + 4, str(count),
                                  ' text-anchor="middle" font-size="11"'))
    y = top + len(top_down) * CELL + 24
    for color, meaning in (("#cfe3cf", "imports a layer below"),
                           ("#e4e4e4", "imports within the layer"),
                           ("#f4b6b6", "imports a layer above: breaks the rule")):
        body.append(f'<rect x="{MATRIX_X}" y="{y - 11:g}" width="14" height="14" '
                    f'fill="{color}" stroke="#bbb"/>')
        body.append(_text(MATRIX_X + 22, y, meaning, ' font-size="11"'))
        y += 20

    chain = longest_chain(code)
    y += 14
    body.append(_text(MATRIX_X, y, f"Longest import chain: {len(chain)} modules",
                      ' font-weight="bold"'))
    for module in chain:
        y += 16
        body.append(_text(MATRIX_X + 10, y, _short(module), ' font-size="11"'
                          ' font-family="monospace"'))

    width = left + len(top_down) * CELL + 30
    bottom = max(boxes_bottom, y) + 12
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:g}" height="{bottom:g}" '
            f'viewBox="0 0 {width:g} {bottom:g}" {FONT} font-size="12">',
            f'<rect width="{width:g}" height="{bottom:g}" fill="#ffffff"/>',
            _text(BOX_X, 30, f"The layers of {PACKAGE}/, bottom to top",
                  ' font-weight="bold" font-size="14"')]
    comment = ("<!-- Generated from the code by scripts/layers.py, its picture option;"
               " do not edit. -->")
    return "\n".join([comment, *head, *body, "</svg>"]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--picture", action="store_true",
                        help=f"write {PICTURE.as_posix()} instead of the report")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the repository (default: the one this script is in)")
    args = parser.parse_args(argv)
    try:
        code = read_code(args.root)
    except SyntaxError as error:
        print(f"{error.filename}:{error.lineno}: cannot read the imports: {error.msg}",
              file=sys.stderr)
        return 2
    if args.picture:
        target = args.root / PICTURE
        target.write_text(picture(code), encoding="utf-8")
        print(f"wrote {PICTURE.as_posix()}")
        return 0
    sys.stdout.write(report(code))
    return 1 if any(violations(code).values()) else 0


if __name__ == "__main__":
    sys.exit(main())
