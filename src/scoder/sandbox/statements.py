"""What a test is: the top-level statements of a tests string, each compiled on its own and
flagged test or setup, so the harness can run them one at a time and count the tests."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from types import CodeType

from scoder.sandbox.result import one_line

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


def parse_code(code: str) -> ast.Module | None:
    """Model-written code as a syntax tree, or None where it is not Python: never raises (NUL
    bytes, lone surrogates and nesting too deep for the parser included)."""
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


@dataclass(frozen=True)
class SplitTests:
    """The top-level statements of a tests string, compiled, each flagged test or setup."""

    statements: list[tuple[bool, CodeType]]  # (is_test, code), in order
    linenos: list[int]
    error: str = ""  # the tests do not compile: why

    @property
    def tests_total(self) -> int:
        return sum(is_test for is_test, _ in self.statements)


def _executed_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Nodes that run when `node` runs: a def's body (or a lambda's) runs only when called."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (*_DEFS, ast.Lambda)):
            stack.extend(d for d in (*n.args.defaults, *n.args.kw_defaults) if d is not None)
            stack.extend(getattr(n, "decorator_list", ()))
            continue
        yield n
        stack.extend(ast.iter_child_nodes(n))


def is_assertion(node: ast.AST) -> bool:
    """An `assert` statement, or a unittest assertion (`self.assertEqual(...)`, `self.fail()`)."""
    if isinstance(node, ast.Assert):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and (node.func.attr.startswith("assert") or node.func.attr == "fail")
    )


def _checkers(body: list[ast.stmt]) -> set[str]:
    """Top-level functions whose call runs an assert (HumanEval's `def check(...)`), and classes
    whose methods assert (a unittest TestCase: `Case("test_x").debug()` runs one), transitively."""
    defs = {s.name: s for s in body if isinstance(s, (*_DEFS, ast.ClassDef))}
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, node in defs.items():
            if name not in found and any(_asserts(n, found) for n in ast.walk(node)):
                found.add(name)
                changed = True
    return found


def _asserts(node: ast.AST, checkers: set[str]) -> bool:
    if is_assertion(node):
        return True
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in checkers
    )


def split_tests(tests: str) -> SplitTests:
    """Top-level statements of `tests`: one that runs an assert is a test, the rest is setup.

    "Runs an assert": contains an `assert` (or a unittest assertion) outside any nested function
    body, or calls a top-level function or class of `tests` that asserts. So `def check(f): assert
    ...` is setup and `check(f)` the test; `class T(unittest.TestCase)` is setup and
    `T("test_x").debug()` a test.
    """
    try:
        tree = ast.parse(tests, "<tests>")
        checkers = _checkers(tree.body)
        statements, linenos = [], []
        for stmt in tree.body:
            is_test = any(_asserts(n, checkers) for n in _executed_nodes(stmt))
            module = ast.Module(body=[stmt], type_ignores=[])
            # dont_inherit: this module's own `from __future__` imports must not leak into theirs
            code = compile(module, "<tests>", "exec", dont_inherit=True, optimize=0)
            statements.append((is_test, code))
            linenos.append(stmt.lineno)
    except Exception as e:  # whatever the parser or compiler makes of hostile text: theirs
        return SplitTests([], [], error=f"tests do not compile: {one_line(e)}")
    return SplitTests(statements, linenos)
