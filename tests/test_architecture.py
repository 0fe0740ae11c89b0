"""The library's shape: no import cycle between its modules, every module of a readable size,
the library never imports the experiment runner, torch is its only hard dependency."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sparsetrain"
MAX_LINES = 650


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every library module ``path`` imports, at any level of the file (function bodies included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    tree = ast.parse(path.read_text())
    typing_only = set()  # imports under ``if TYPE_CHECKING:`` do not run
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            typing_only.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("sparsetrain"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("sparsetrain"))
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for target in _imports(path, name):
            while target and target not in files:  # "pkg.mod.func" -> "pkg.mod"
                target = target.rpartition(".")[0]
            if not target or target == name:
                continue
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                mod = ".".join(parts[:i])
                if mod in files and mod != name and not name.startswith(mod + "."):
                    edges.add(mod)
        graph[name] = edges
    return graph


def test_no_import_cycle_between_library_modules():
    graph = _graph()
    # the package's own __init__ re-exports everything; cycles through it are not real edges
    for edges in graph.values():
        edges.discard("sparsetrain")
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_every_module_is_of_a_readable_size():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules above {MAX_LINES} lines: {long}"


def test_the_library_never_imports_the_experiments_or_the_cli():
    graph = _graph()
    for name, edges in graph.items():
        if name.startswith(("sparsetrain.experiments", "sparsetrain.cli", "sparsetrain.__main__", "sparsetrain.bench")):
            continue
        bad = {e for e in edges if e.startswith(("sparsetrain.experiments", "sparsetrain.cli"))}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_importing_the_library_does_not_load_the_compiler_stack():
    # torch._dynamo takes seconds to import: `import sparsetrain` (and so every CLI call) must not
    # pay for it unless the user compiles
    import subprocess
    import sys

    code = ("import sys, sparsetrain, sparsetrain.sparse, sparsetrain.cli; "
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
