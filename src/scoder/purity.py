"""Is a seed a pure, self-contained function? A static check, no execution.

A small synthesizer writes tests it can get right only for code whose behaviour is its inputs and
its output: a function that opens files, reads the clock, builds objects of its module or leans on
the module's globals gives it problems it cannot test (measured with Qwen2.5-Coder-0.5B on stdlib
seeds: 1 of 7 solutions passed its own tests). `impurity` names the first thing in a snippet that
makes it unfit, or returns None for a function that

- is one top-level `def` (not async, no decorators: they are names of the module);
- takes at least one parameter and returns a value (not merely one of its arguments, as
  `typing.cast` does);
- loads no name from outside itself other than harmless builtins (no `open`, `print`, `input`,
  `eval`, `getattr`, ...): its module's helpers and constants are not there when the function is
  lifted out;
- imports, if at all, only modules without side effects (`math`, `re`, `itertools`, ...), and
  uses no other module's name;
- has no `global`/`nonlocal`, `with`, `await` or `yield`, sets no attribute and reads no dunder
  attribute (`obj.x = ...`, `f.__name__`: it changes or inspects objects rather than values).

It is a filter for seeds, not a sandbox: whatever a model writes from a seed still runs only in
the sandbox.
"""

from __future__ import annotations

import ast
import builtins

# Builtins a pure function may use: no I/O, no reflection on or changes to other objects'
# attributes, nothing that differs between runs (`id`, `hash` of str), no code execution.
PURE_BUILTINS = frozenset(
    {
        "abs", "all", "any", "ascii", "bin", "bool", "bytearray", "bytes", "callable", "chr",
        "complex", "dict", "divmod", "enumerate", "filter", "float", "format", "frozenset",
        "hex", "int", "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min",
        "next", "oct", "ord", "pow", "range", "repr", "reversed", "round", "set", "slice",
        "sorted", "str", "sum", "tuple", "type", "zip", "True", "False", "None", "NotImplemented",
        "Ellipsis",
    }
    | {name for name in dir(builtins) if name.endswith(("Error", "Exception", "Warning"))}
)  # fmt: skip
# Modules whose functions compute and return: no files, processes, network, clock or randomness.
PURE_MODULES = frozenset(
    {
        "math", "cmath", "re", "string", "itertools", "functools", "operator", "collections",
        "heapq", "bisect", "statistics", "fractions", "decimal", "unicodedata", "textwrap",
        "difflib", "copy", "numbers", "keyword", "colorsys", "binascii", "base64", "struct",
    }
)  # fmt: skip
# Statements that are about the world outside the function.
IMPURE_NODES: dict[type[ast.AST], str] = {
    ast.Global: "`global`",
    ast.Nonlocal: "`nonlocal`",
    ast.With: "`with`",
    ast.AsyncWith: "`async with`",
    ast.Await: "`await`",
    ast.Yield: "`yield` (a generator)",
    ast.YieldFrom: "`yield from` (a generator)",
}


def impurity(code: str) -> str | None:
    """Why `code` is not one pure, self-contained function, or None when it is."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError) as exc:
        return f"does not parse ({type(exc).__name__})"
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        kinds = ", ".join(type(node).__name__ for node in tree.body[:3]) or "nothing"
        return f"not a single function definition ({kinds})"
    func = tree.body[0]
    if func.decorator_list:
        return "decorated"
    params = [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]
    if func.args.vararg:
        params.append(func.args.vararg)
    if func.args.kwarg:
        params.append(func.args.kwarg)
    if not params:
        return "takes no parameters"
    if params[0].arg in ("self", "cls"):
        return f"a method (first parameter `{params[0].arg}`)"

    body = func.body[1:] if ast.get_docstring(func) is not None else func.body
    if (
        len(body) == 1
        and isinstance(body[0], ast.Return)
        and isinstance(body[0].value, ast.Name)
        and body[0].value.id in {p.arg for p in params}
    ):
        return "trivial (returns its argument)"

    bound = {func.name}
    loaded: list[str] = []
    returns_value = False
    for node in ast.walk(func):
        for kind, what in IMPURE_NODES.items():
            if isinstance(node, kind):
                return f"uses {what}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                top = (module or alias.name).split(".")[0]
                if top not in PURE_MODULES or (isinstance(node, ast.ImportFrom) and node.level):
                    return f"imports {module or alias.name}"
                bound.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            return f"sets or deletes an attribute (`.{node.attr}`)"
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            return f"reflects on objects (`.{node.attr}`)"
        elif isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                loaded.append(node.id)
            else:
                bound.add(node.id)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            or isinstance(node, ast.ExceptHandler)
            and node.name
        ):
            bound.add(node.name)
        elif isinstance(node, ast.Return) and node.value is not None:
            returns_value = True
    for name in loaded:
        # A pure module imported at the top of the snippet's file (`math.sqrt`) is as harmless.
        if name not in bound and name not in PURE_BUILTINS and name not in PURE_MODULES:
            where = "a builtin with effects" if hasattr(builtins, name) else "outside the function"
            return f"uses `{name}` ({where})"
    if not returns_value:
        return "returns no value"
    return None
