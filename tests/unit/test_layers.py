"""The package's architecture, checked: imports only run downward through the layers of docs/architecture.md,
the module graph has no cycle, and no module is long without saying why.

Every import counts: top-level, lazy (inside a function) and typing-only (``if TYPE_CHECKING:``) ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "pytest_llmeval"

# Bottom to top; a package may import from its own row and the rows before it (docs/architecture.md).
LAYERS: list[set[str]] = [
    {"core"},
    {"cases"},
    {"sandbox", "cache", "results"},
    {"rag", "config"},
    {"providers"},
    {"targets"},
    {"checks"},
    {"report"},
    {"robustness"},
    {"run"},
    {"flywheel"},
    {"cli", "plugin", "strategies", "hookspecs", "__init__"},
]
RANK = {name: i for i, row in enumerate(LAYERS) for name in row}
MAX_LINES = 600
LONG_REASON = "Why this module is long:"  # a module over MAX_LINES says why in its docstring, after these words


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer() -> None:
    assert {_top(m) for m in _modules()} - set(RANK) == set()


def test_imports_only_run_downward() -> None:
    upward = sorted(f"{a} -> {b}" for a, targets in _graph().items() for b in targets
                    if RANK[_top(b)] > RANK[_top(a)])
    assert upward == []


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert [" -> ".join(c) for c in cycles] == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_long_modules_say_why(name: str) -> None:
    path = _modules()[name]
    text = path.read_text(encoding="utf-8")
    if len(text.splitlines()) > MAX_LINES:
        docstring = ast.get_docstring(ast.parse(text)) or ""
        assert LONG_REASON in docstring, f"{path.relative_to(SRC.parent)}: {len(text.splitlines())} lines"


def test_the_architecture_page_names_every_package() -> None:
    page = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {p for p in packages if f"`{p}/`" not in page} == set()
