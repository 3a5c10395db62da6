"""Layering rules, checked on the source with ``ast`` (nothing is imported).

- No import cycle among ``karst`` modules, counting imports inside functions too: a local import
  must not be the thing that hides a cycle.
- ``karst`` never imports gradio or the app's ``components``.
- The UI (``components/``, ``app.py``) imports from ``karst`` only the names listed under
  "## Names the UI may use" in docs/ARCHITECTURE.md, and every listed name is used.
- Every function-local import in ``karst/`` and ``components/`` says why on a ``# local:`` comment:
  on its line, or on the line above it or above the group of import lines it belongs to (imports,
  comments and blank lines only).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE_MD = ROOT / "docs" / "ARCHITECTURE.md"
UI_LIST_HEADING = "## Names the UI may use"
LOCAL_TAG = "# local:"


@dataclass(frozen=True)
class Import:
    """One imported module (or one name of it) in one module's source."""

    module: str  # the importing module, e.g. "karst.data.vtab"
    target: str  # the imported module, resolved: "karst.data.sources"
    name: str | None  # the name taken from it ("from .config import name"); None for a module
    line: int
    local: bool  # inside a function


def module_name(rel_path: str) -> tuple[str, bool]:
    """``"karst/data/vtab.py"`` → ``("karst.data.vtab", False)``; packages map to their folder."""
    parts = rel_path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def read_sources(*roots: str, base: Path = ROOT) -> dict[str, str]:
    """``{relative path: source}`` of every .py file under ``roots`` (folders or single files)."""
    out = {}
    for root in roots:
        path = base / root
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for f in files:
            out[f.relative_to(base).as_posix()] = f.read_text(encoding="utf-8")
    return out


class _ImportFinder(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]):
        self.module, self.known, self.depth = module, known, 0
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[Import] = []

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def _add(self, target: str, name: str | None, node: ast.stmt) -> None:
        self.found.append(Import(self.module, target, name, node.lineno, self.depth > 0))

    def _known_prefix(self, dotted: str) -> str:
        # The longest prefix that is a module of the tree; other packages shrink to their top name.
        while dotted not in self.known and "." in dotted:
            dotted = dotted.rpartition(".")[0]
        return dotted

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(self._known_prefix(alias.name), None, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base_parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            # "from karst.data import synthetic" imports a module; "from .config import X" a name.
            if sub in self.known:
                self._add(sub, None, node)
            else:
                self._add(self._known_prefix(base), alias.name, node)


def parse_imports(sources: dict[str, str]) -> list[Import]:
    """Every import statement (top level and inside functions) of ``sources``, resolved."""
    modules = {rel: module_name(rel) for rel in sources}
    known = {name for name, _ in modules.values()}
    found: list[Import] = []
    for rel, source in sources.items():
        name, is_package = modules[rel]
        finder = _ImportFinder(name, is_package, known)
        finder.visit(ast.parse(source, filename=rel))
        found += finder.found
    return found


def import_cycles(imports: list[Import], prefix: str = "karst") -> list[list[str]]:
    """Strongly connected components of more than one module, and self-imports, among ``prefix.*``."""

    def inside(name: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    graph: dict[str, set[str]] = {}
    for imp in imports:
        if inside(imp.module):
            graph.setdefault(imp.module, set())
            if inside(imp.target):
                graph[imp.module].add(imp.target)
                graph.setdefault(imp.target, set())

    # Tarjan's algorithm, iterative (no recursion limit on a big package).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(sorted(component))
    return sorted(components)


def forbidden_imports(imports: list[Import], forbidden: tuple[str, ...] = ("gradio", "components")) -> list[str]:
    """``karst`` modules importing the UI toolkit or the app's panels, anywhere in the file."""
    return [f"{imp.module}:{imp.line} imports {imp.target}" for imp in imports
            if imp.module.split(".")[0] == "karst" and imp.target.split(".")[0] in forbidden]


def karst_names_used(imports: list[Import]) -> dict[str, list[str]]:
    """``{"karst.module.Name": ["components.x:12", ...]}`` for every karst import outside ``karst``."""
    used: dict[str, list[str]] = {}
    for imp in imports:
        if imp.module.split(".")[0] == "karst" or imp.target.split(".")[0] != "karst":
            continue
        full = imp.target if imp.name is None else f"{imp.target}.{imp.name}"
        used.setdefault(full, []).append(f"{imp.module}:{imp.line}")
    return used


def documented_ui_names(markdown: str) -> list[str]:
    """The ``karst.module.Name`` lines of the first fenced block under the "Names the UI may use" heading."""
    section = markdown.partition(UI_LIST_HEADING)[2].split("\n## ")[0]
    match = re.search(r"```[^\n]*\n(.*?)```", section, flags=re.S)
    if not match:
        return []
    lines = (line.split("#")[0].strip() for line in match.group(1).splitlines())
    return [line for line in lines if line]


def _explained(lines: list[str], index: int) -> bool:
    """A ``# local:`` tag on line ``index``, or above it across import lines, comments and blank lines."""
    if LOCAL_TAG in lines[index]:
        return True
    for line in reversed(lines[:index]):
        text = line.strip()
        if text.startswith(LOCAL_TAG) or (LOCAL_TAG in text and text.startswith(("from ", "import "))):
            return True
        if text and not text.startswith(("from ", "import ", "#")):
            return False
    return False


def unexplained_local_imports(sources: dict[str, str]) -> list[str]:
    """Function-local imports with no ``# local:`` comment on their line, the line above, or above
    the group of import lines (with comments and blank lines between them) they belong to."""
    problems = set()
    for rel, source in sources.items():
        lines = source.splitlines()
        for imp in parse_imports({rel: source}):
            if imp.local and not _explained(lines, imp.line - 1):
                problems.add(f"{rel}:{imp.line}: {lines[imp.line - 1].strip()}")
    return sorted(problems)


# --------------------------------------------------------------------------------------- the rules


@pytest.fixture(scope="module")
def library() -> dict[str, str]:
    return read_sources("karst")


@pytest.fixture(scope="module")
def ui() -> dict[str, str]:
    return read_sources("components", "app.py")


def test_no_import_cycles_in_karst(library):
    cycles = import_cycles(parse_imports(library))
    assert not cycles, f"import cycles (top-level and function-level imports): {cycles}"


def test_karst_never_imports_the_ui(library):
    assert not forbidden_imports(parse_imports(library))


def test_ui_uses_only_documented_karst_names(library, ui):
    documented = documented_ui_names(ARCHITECTURE_MD.read_text(encoding="utf-8"))
    assert documented, f"no fenced list under {UI_LIST_HEADING!r} in {ARCHITECTURE_MD}"
    used = karst_names_used(parse_imports({**library, **ui}))
    undocumented = {name: where for name, where in used.items() if name not in documented}
    assert not undocumented, f"add these to {UI_LIST_HEADING!r} in docs/ARCHITECTURE.md (or move the " \
                             f"logic into karst): {undocumented}"
    stale = [name for name in documented if name not in used]
    assert not stale, f"listed under {UI_LIST_HEADING!r} but no longer imported by the UI: {stale}"


def test_local_imports_say_why(library):
    ui_panels = read_sources("components")
    missing = unexplained_local_imports({**library, **ui_panels})
    assert not missing, f"function-local imports need a '{LOCAL_TAG} <reason>' comment, or move them " \
                        f"to the top of the module: {missing}"


# ---------------------------------------------------------------------- the checker catches breaks


def test_checker_reports_a_two_module_cycle_hidden_in_a_function():
    sources = {
        "karst/__init__.py": "",
        "karst/a.py": "from .b import helper\n",
        "karst/b.py": "def f():\n    from karst.a import thing  # local: hides the cycle\n    return thing\n",
        "karst/c.py": "from . import a\n",
    }
    assert import_cycles(parse_imports(sources)) == [["karst.a", "karst.b"]]


def test_checker_resolves_relative_imports_in_subpackages():
    sources = {
        "karst/__init__.py": "",
        "karst/data/__init__.py": "from .sources import load\n",
        "karst/data/sources.py": "from karst.data import vtab\n",
        "karst/data/vtab.py": "from ..data.sources import split\n",
        "karst/selfish.py": "import karst.selfish\n",
    }
    assert import_cycles(parse_imports(sources)) == [["karst.data.sources", "karst.data.vtab"], ["karst.selfish"]]


def test_checker_reports_ui_imports_in_the_library():
    library = "def f():\n    import gradio as gr\n    from components import fmt\n"
    sources = {"karst/__init__.py": "", "karst/x.py": library}
    assert forbidden_imports(parse_imports(sources)) == ["karst.x:2 imports gradio", "karst.x:3 imports components"]


def test_checker_lists_the_karst_names_the_ui_takes():
    sources = {
        "karst/__init__.py": "",
        "karst/runs.py": "",
        "karst/data/__init__.py": "",
        "components/__init__.py": "",
        "components/p.py": "import karst.runs\nfrom karst.runs import RunStore\nfrom karst import data, KarstError\n",
    }
    assert set(karst_names_used(parse_imports(sources))) == {"karst.runs", "karst.runs.RunStore", "karst.data",
                                                             "karst.KarstError"}
    doc = f"# x\n{UI_LIST_HEADING}\nText.\n```\nkarst.runs.RunStore\n# a comment\nkarst.data\n```\n"
    doc += "## Next\n```\nkarst.no\n```\n"
    assert documented_ui_names(doc) == ["karst.runs.RunStore", "karst.data"]


def test_checker_reports_unexplained_local_imports():
    source = (
        "import os\n"
        "def ok():\n"
        "    # local: optional extra\n"
        "    import peft\n"
        "\n"
        "    import peft.tuners\n"
        "    import json  # local: same line\n"
        "def bad():\n"
        "    import torch\n"
        "    x = 1\n"
        "    import numpy\n"
    )
    expected = ["karst/m.py:11: import numpy", "karst/m.py:9: import torch"]
    assert unexplained_local_imports({"karst/m.py": source}) == expected
