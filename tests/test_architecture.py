"""The shape of the code, checked: no import cycle among scoder's modules, scoder's own imports at
the top of files (heavy third-party packages may be imported where they are used), no module so
long that it holds several concerns."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LINES = 700


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "scoder").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (not those under `if TYPE_CHECKING:`)."""
    found = []
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                stack += handler.body
    return found


def dependencies(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The scoder modules that must finish importing before `name` can: a module it imports,
    or the package a name comes from. Importing a module of a package that `name` is not part of
    runs that package's __init__ first, so the package counts too."""
    deps: set[str] = set()

    def use(module: str) -> None:
        deps.add(module)
        parent = module.rpartition(".")[0]
        if parent in known and parent != "scoder" and not name.startswith(parent + "."):
            deps.add(parent)

    for node in top_level_imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    use(alias.name)
        elif node.module and node.level == 0 and node.module.split(".")[0] == "scoder":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                use(sub if sub in known else node.module)
    deps.discard(name)
    return {d for d in deps if d in known}


def test_no_import_cycle():
    known = modules()
    graph = {
        name: dependencies(name, ast.parse(path.read_text()), set(known))
        for name, path in known.items()
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_scoder_modules_are_imported_at_the_top_of_files():
    late = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        top = set(map(id, top_level_imports(tree)))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                targets = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                ours = any((t or "").split(".")[0] == "scoder" for t in targets)
                if ours and not _under_type_checking(tree, node):
                    late.append(f"{name}:{node.lineno}")
    assert late == [], f"scoder imports inside functions: {late}"


def _under_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and _is_type_checking(node)
            and any(child is target for child in ast.walk(node))
        ):
            return True
    return False


def test_no_module_is_too_long_to_hold_one_concern():
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_the_cycle_check_sees_a_cycle_through_a_package_init(tmp_path):
    """The check itself: a config module importing a package whose __init__ imports it back."""
    config = ast.parse("from scoder.eval.benchmarks import X\n")
    runner = ast.parse("from scoder.config import Config\n")
    package = ast.parse("from scoder.eval.runner import run\n")
    known = {
        "scoder",
        "scoder.config",
        "scoder.eval",
        "scoder.eval.runner",
        "scoder.eval.benchmarks",
    }
    assert dependencies("scoder.config", config, known) == {
        "scoder.eval.benchmarks",
        "scoder.eval",
    }
    assert dependencies("scoder.eval.runner", runner, known) == {"scoder.config"}
    assert dependencies("scoder.eval", package, known) == {"scoder.eval.runner"}
