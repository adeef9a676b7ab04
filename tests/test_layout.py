"""The package's layout rules: no import circle between reprkit's modules, no module importing
another's private name, and no module over about 400 lines without a reason in its docstring."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reprkit"


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the reprkit modules it imports anywhere (a function-level import counts: hiding a
    circle behind a lazy import does not remove it), and every private name imported from one."""
    files = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    private: list[str] = []
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node)
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    dest = full if full in files else target
                    if dest in files and dest != module:
                        graph[module].add(dest)
                    if dest in files and alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{module} imports {alias.name} from {target}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in files and alias.name != module:
                        graph[module].add(alias.name)
    return graph, private


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle between modules, or None. A package's ``__init__`` re-exporting its
    submodules is not a circle: edges into a package's own ``__init__`` from inside it are ignored."""

    def inside(child: str, parent: str) -> bool:
        return child.startswith(parent + ".")

    edges = {m: {d for d in ds if not inside(m, d) and not inside(d, m)} for m, ds in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_circle_in_the_package():
    graph, _ = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_module_imports_another_modules_private_name():
    _, private = import_graph()
    assert private == []


def test_the_checks_see_a_circle_and_a_private_import(tmp_path):
    pkg = tmp_path / "reprkit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("from reprkit.a import _helper\n")
    graph, private = import_graph(pkg)
    assert find_cycle(graph) in (["reprkit.a", "reprkit.b", "reprkit.a"], ["reprkit.b", "reprkit.a", "reprkit.b"])
    assert private == ["reprkit.b imports _helper from reprkit.a"]
    (pkg / "b.py").write_text("import os\n")
    graph, private = import_graph(pkg)
    assert find_cycle(graph) is None and private == []


def long_modules_without_a_reason(package: Path = PACKAGE, limit: int = 450) -> list[str]:
    """Modules over ``limit`` lines whose docstring does not say why (it names its length)."""
    out = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > limit and "lines" not in doc:
            out.append(f"{path.relative_to(package)}: {len(text.splitlines())} lines")
    return out


def test_a_long_module_says_why_in_its_docstring(tmp_path):
    assert long_modules_without_a_reason() == []
    (tmp_path / "long.py").write_text('"""A module."""\n' + "x = 1\n" * 500)
    assert long_modules_without_a_reason(tmp_path) == ["long.py: 501 lines"]
    (tmp_path / "long.py").write_text('"""About 500 lines: one table."""\n' + "x = 1\n" * 500)
    assert long_modules_without_a_reason(tmp_path) == []
