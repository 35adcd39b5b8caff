"""Finding the program to run in a model's answer (`extract_program`).

Answers come as fenced blocks or bare code, with chatter before and prose after, cut off by
max_new_tokens, or as only the body of the prompt's function: the code is taken from where it starts
to where it stops parsing, joined to the prompt when it is a body, the prompt's imports and helpers
kept, and top-level calls, prints and asserts (the answer's own demos and tests) dropped.
"""

from __future__ import annotations

import ast
import re

from scoder.eval.benchmarks import BenchmarkTask
from scoder.sandbox import parse_code

_FENCE = re.compile(r"^[ \t]*```+[ \t]*([\w+.-]*)[^\n]*$", re.MULTILINE)
_CODE_START = re.compile(r"^(?:def |async def |class |import |from \S+ import |@)", re.MULTILINE)
_PYTHON_TAGS = ("", "python", "python3", "py", "py3")
_KEEP = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Assign,
    ast.AnnAssign,
    ast.Try,
    ast.If,
)


def _fenced_blocks(text: str) -> list[str]:
    """Python (or untagged) fenced blocks, in order; an unclosed last fence runs to the end."""
    fences = list(_FENCE.finditer(text))
    blocks = []
    for i in range(0, len(fences), 2):
        opening = fences[i]
        end = fences[i + 1].start() if i + 1 < len(fences) else len(text)
        if opening.group(1).lower() in _PYTHON_TAGS:
            blocks.append(text[opening.end() + 1 : end])
    return blocks


def _longest_parsing_prefix(code: str) -> tuple[str, ast.Module] | None:
    """Drop trailing lines (prose after the code, or an answer cut off by max_new_tokens) until
    what is left parses; first by top-level chunks, then line by line within the last one."""
    lines = code.splitlines(keepends=True)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return None
    starts = [i for i, line in enumerate(lines) if line[:1] not in ("", " ", "\t", "\n", "\r")]
    for cut in [len(lines), *reversed(starts)]:
        if cut == 0:
            continue
        tree = parse_code("".join(lines[:cut]))
        if tree is not None:
            return "".join(lines[:cut]), tree
    for cut in range(len(lines) - 1, 0, -1):
        tree = parse_code("".join(lines[:cut]))
        if tree is not None:
            return "".join(lines[:cut]), tree
    return None


def _defines(tree: ast.Module, name: str) -> bool:
    return any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name
        for node in tree.body
    )


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def _statements(code: str, tree: ast.Module) -> list[tuple[ast.stmt, str]]:
    """Each top-level statement with its source (decorators included)."""
    lines = code.splitlines(keepends=True)
    out = []
    for node in tree.body:
        start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        out.append((node, "".join(lines[start - 1 : node.end_lineno])))
    return out


def _names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    return set()


def _program(parts: list[tuple[str, ast.Module]]) -> str:
    """Imports and definitions of every part, in order; the first definition of a name wins; calls,
    prints, asserts, loops and `if __name__ == "__main__":` blocks at top level are dropped."""
    kept, defined = [], set()
    for code, tree in parts:
        for node, source in _statements(code, tree):
            if not isinstance(node, _KEEP) or _is_main_guard(node):
                continue
            names = _names(node)
            if names & defined:
                continue
            defined |= names
            kept.append(source.rstrip() + "\n")
    return "\n".join(kept)


def _as_body(code: str, prompt: str) -> tuple[str, ast.Module] | None:
    """The prompt plus `code` read as the rest of the prompt's function (HumanEval completions)."""
    body = code if code[:1] in (" ", "\t") or not code.strip() else _indent(code)
    joined = prompt.rstrip("\n") + "\n" + body.lstrip("\n")
    return _longest_parsing_prefix(joined)


def _indent(code: str) -> str:
    return "".join("    " + line if line.strip() else line for line in code.splitlines(True))


def _prompt_context(prompt: str, entry_point: str) -> tuple[list, list]:
    """The prompt's imports, and its helper definitions (HumanEval prompts import from typing, and
    some define helpers that the entry point uses)."""
    tree = parse_code(prompt)
    if tree is None:
        return [], []
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    helpers = [n for n in tree.body if _names(n) and entry_point not in _names(n)]
    return (
        [(prompt, ast.Module(body=imports, type_ignores=[]))] if imports else [],
        [(prompt, ast.Module(body=helpers, type_ignores=[]))] if helpers else [],
    )


def _has_body(tree: ast.Module, name: str) -> bool:
    """The function `name` does something beyond its docstring."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            return bool(body)
    return False


def _best_parse(block: str, entry_point: str) -> tuple[tuple[str, ast.Module] | None, bool]:
    """The longest parsing stretch of a block, starting at its top or (past leading chatter) at
    one of its first definitions/imports; one that defines the entry point is preferred."""
    first = None
    starts = [0, *(m.start() for m in _CODE_START.finditer(block))][:6]
    for start in dict.fromkeys(starts):
        got = _longest_parsing_prefix(block[start:])
        if got is None or not got[1].body:
            continue
        if _defines(got[1], entry_point):
            return got, True
        first = first or got
    return first, False


def extract_program(
    text: str, task: BenchmarkTask, benchmark: str, prefix: str = ""
) -> tuple[str, str]:
    """The program to run from a model's answer, and how it was found.

    `prefix` is the prompt the answer continues (completion prompts), "" for chat answers. The
    code is looked for in fenced blocks (the one defining the entry point first), else in the
    whole text, past any leading chatter; an answer that is only the function's body (the rest of
    the HumanEval prompt's function) is joined to the prompt. The prompt's imports and helpers
    are kept; top-level code other than imports, definitions and assignments is dropped.
    """
    prompt = task.prompt if benchmark == "humaneval" else prefix
    text = text.replace("\r\n", "\n")
    blocks = _fenced_blocks(text)
    how = "fenced"
    if not blocks:
        how, blocks = "unfenced", [text]
    parsed, main = [], None
    for block in blocks:
        got, defines = _best_parse(block, task.entry_point)
        if got is not None:
            parsed.append(got)
            if defines and main is None:
                main = got
    if main is None and benchmark == "humaneval":
        for block in blocks:
            got = _as_body(block, prefix or prompt)
            if got is not None and _has_body(got[1], task.entry_point):
                main, how = got, how + "+body"
                parsed.insert(0, got)
                break
    if main is None:
        if not parsed:
            return "", "none"
        main, how = parsed[0], how + "+no-entry-point"
    imports, helpers = _prompt_context(prompt, task.entry_point)
    others = [p for p in parsed if p is not main]
    return _program([*imports, main, *others, *helpers]), how
