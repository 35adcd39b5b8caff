"""Reading what models write: a synthesis answer into problem, solution and tests, and a judge's
answer into scores.

Model output is hostile text. The parsers take what real models write — markdown, bold or plain
headers with many names (`### Test Cases`, `**Solution:**`, `Problem: ...` on one line), fenced
blocks with prose around them, bare code, a solution and its asserts in one block, pytest-style
test functions, unittest `TestCase` classes, JSON in a code fence, `8.0` or `"8"` for 8 — and turn
anything else into one precise reason, never an exception. The caller keeps the raw text.

Tests are normalised into statements the sandbox harness runs one by one: an uncalled
`def test_x():` gets its call, each `test_*` method of a `TestCase` its `Case("test_x").debug()`,
and `unittest.main()` / `pytest.main()` under a `__main__` guard are dropped (the harness runs the
tests as the main script, where they would exit).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scoder.filters import DropReasons
from scoder.records import Drop
from scoder.sandbox import is_assertion, parse_code

SynthesisDrop = Literal[
    "empty_output",
    "missing_problem",
    "empty_problem",
    "missing_solution",
    "unclosed_solution_fence",
    "empty_solution",
    "solution_syntax_error",
    "missing_tests",
    "unclosed_tests_fence",
    "empty_tests",
    "tests_syntax_error",
    "tests_without_assert",
    "truncated",
]
SYNTHESIS = DropReasons("synthesize", SynthesisDrop)

# Section names real models use, lowercased, after any markdown, bold or numbering is removed.
SECTION_NAMES = {
    "problem": (
        "problem",
        "problem statement",
        "problem description",
        "programming problem",
        "coding problem",
        "task",
        "task description",
        "question",
        "exercise",
        "challenge",
        "instruction",
    ),
    "solution": (
        "solution",
        "python solution",
        "solution code",
        "reference solution",
        "implementation",
        "code",
        "answer",
    ),
    "tests": (
        "tests",
        "test",
        "unit tests",
        "unit test",
        "test cases",
        "test case",
        "testing",
        "test code",
        "example tests",
        "test suite",
        "assertions",
    ),
}
_CANONICAL = {name: kind for kind, names in SECTION_NAMES.items() for name in names}
_MARK = r"(?:\*\*|__|\*|_)?"
_LEAD = rf"^[ \t]*(?P<hashes>#{{1,6}}[ \t]*)?(?:\d+[.)][ \t]*)?{_MARK}[ \t]*"
_NAME = r"(?P<name>[A-Za-z][A-Za-z ]{0,40}?)"
# a header alone on its line ("### Test Cases", "**Solution:**", "Tests")
_HEADER = re.compile(rf"{_LEAD}{_NAME}[ \t]*{_MARK}[ \t]*:?[ \t]*{_MARK}[ \t]*$")
# a header with its text on the same line ("**Problem:** Write a function ...")
_INLINE = re.compile(
    rf"{_LEAD}{_NAME}[ \t]*{_MARK}[ \t]*:[ \t]*{_MARK}[ \t]*(?P<rest>\S.*?)[ \t]*$"
)
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.-]*)[^\n]*$", re.MULTILINE)
_PYTHON = ("", "python", "python3", "py", "py3", "pycon")
_CODE_START = re.compile(
    r"^(?:def |async def |class |import |from \S+ import |@|assert |[A-Za-z_]\w*\s*=|if __name__)"
)
_CHATTER = re.compile(
    r"^(?:sure|certainly|okay|ok|of course|here(?: is|'s| are)|absolutely)\b", re.I
)


@dataclass
class Parsed:
    problem: str
    solution: str
    tests: str


class ParseFailure(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_synthesis(text: str, finish_reason: str = "stop") -> Parsed | Drop:
    """Split an answer into problem / solution / tests, or say why it cannot be used."""
    try:
        return _parse(text)
    except ParseFailure as failure:
        if finish_reason == "length":
            detail = f"hit max_new_tokens; {failure.reason}: {failure.detail}"
            return SYNTHESIS.make("truncated", detail)
        return SYNTHESIS.make(failure.reason, failure.detail)


# --- the answer's layout ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    start: int  # offset of the opening fence line
    end: int  # offset just past the closing fence line (or the end of the text)
    lang: str
    code: str
    closed: bool


def _blocks(text: str) -> list[_Block]:
    """Fenced blocks in order; an unclosed last fence runs to the end of the text. Any fence line
    of the same character closes a block, even one with a language tag: a model that opens a new
    block without closing the last one means the last one to end there (code never holds a
    fence line, so nothing that parses is lost)."""
    out, fences = [], list(_FENCE.finditer(text))
    i = 0
    while i < len(fences):
        opening = fences[i]
        marker = opening.group(1)
        closing = next((f for f in fences[i + 1 :] if f.group(1)[0] == marker[0]), None)
        body_start = min(opening.end() + 1, len(text))
        if closing is None:
            out.append(_Block(opening.start(), len(text), opening.group(2).lower(),
                              text[body_start:], False))  # fmt: skip
            break
        out.append(
            _Block(opening.start(), closing.end(), opening.group(2).lower(),
                   text[body_start : closing.start()], True)
        )  # fmt: skip
        i = fences.index(closing) + 1
    return out


def _headers(text: str, blocks: list[_Block]) -> list[tuple[int, int, str | None, str]]:
    """(line start, body start, section kind or None for an unknown markdown header, inline text)
    of every header line outside code blocks."""
    found, offset = [], 0
    inside = [(b.start, b.end) for b in blocks]
    for line in text.splitlines(keepends=True):
        here = offset
        offset += len(line)
        if any(a <= here < b for a, b in inside):
            continue
        bare = line.rstrip("\r\n")
        alone, inline = _HEADER.match(bare), _INLINE.match(bare)
        m = alone or inline
        if not m:
            continue
        kind = _CANONICAL.get(" ".join(m.group("name").lower().split()))
        if kind is not None:
            found.append((here, offset, kind, "" if alone else inline.group("rest")))
        elif alone and m.group("hashes"):
            found.append((here, offset, None, ""))  # "### Explanation" ends a section
    return found


def _sections(text: str, blocks: list[_Block]) -> dict[str, str]:
    """First occurrence of each known section -> its text (inline text, then the body up to the
    next header)."""
    headers = _headers(text, blocks)
    out: dict[str, str] = {}
    for k, (_, body_start, kind, inline) in enumerate(headers):
        end = headers[k + 1][0] if k + 1 < len(headers) else len(text)
        if kind and kind not in out:
            out[kind] = (inline + "\n" if inline else "") + text[body_start:end]
    return out


def _bare_code(body: str) -> str:
    """Code written without a fence: from its first code-like line, less trailing prose."""
    lines = body.splitlines()
    first = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
    if first is None:
        return body.strip("\n")
    lines = lines[first:]
    for cut in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:cut]).strip("\n")
        if candidate.strip() and parse_code(candidate) is not None:
            return candidate
        if len(lines) - cut > 40:  # prose rarely runs this long after code
            break
    return "\n".join(lines).strip("\n")


def _code_of(body: str, what: str, *, join: bool = False) -> str:
    """The code of a section: its Python blocks (the first, or all of them joined), else the
    section's bare code; parsed."""
    blocks = [b for b in _blocks(body) if b.lang in _PYTHON]
    if blocks:
        if not blocks[0].closed:
            raise ParseFailure(f"unclosed_{what}_fence", "code block opened but never closed")
        chosen = [b for b in blocks if b.closed] if join else blocks[:1]
        code = "\n\n".join(b.code.strip("\n") for b in chosen)
    else:
        code = _bare_code(body)
    if not code.strip():
        raise ParseFailure(f"empty_{what}", f"the {what} has no code")
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise ParseFailure(f"{what}_syntax_error", f"{type(exc).__name__}: {exc}") from None
    return code


def _is_test_node(node: ast.stmt) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return node.name.startswith("test")
    if isinstance(node, ast.ClassDef):
        return any(isinstance(b, (ast.Name, ast.Attribute)) and "TestCase" in ast.unparse(b)
                   for b in node.bases)  # fmt: skip
    return any(is_assertion(n) for n in ast.walk(node)) or _is_main_guard(node)


def _split_code(code: str) -> tuple[str, str]:
    """A block holding a solution and its tests: (the solution, the tests)."""
    tree = parse_code(code)
    if tree is None:
        return code, ""
    lines = code.splitlines()
    solution, tests = [], []
    for node in tree.body:
        start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        chunk = "\n".join(lines[start - 1 : node.end_lineno])
        (tests if _is_test_node(node) else solution).append(chunk)
    return "\n".join(solution), "\n".join(tests)


def _looks_like_tests(code: str) -> bool:
    tree = parse_code(code)
    return bool(tree and tree.body) and all(
        _is_test_node(n) or isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body
    )


def _problem_before(text: str, first_code: int) -> str | None:
    """Without a Problem header: the prose before the first code, less a line of chatter."""
    lines = []
    for line in text[:first_code].strip().splitlines():
        if _CODE_START.match(line):  # bare code: the prose is over
            break
        if line.strip():
            lines.append(line)
    while lines and _CHATTER.match(lines[0].strip().strip("*#_ ")):
        lines.pop(0)
    prose = "\n".join(lines).strip()
    prose = re.sub(r"^[#*_ \t]*problem[^:\n]*:[*_ \t]*", "", prose, flags=re.I).strip()
    return prose if len(prose.split()) >= 3 else None


def _parse(text: str) -> Parsed:
    if not text.strip():
        raise ParseFailure("empty_output")
    blocks = _blocks(text)
    sections = _sections(text, blocks)
    code_blocks = [b for b in blocks if b.lang in _PYTHON]

    problem = sections.get("problem")
    if problem is None:
        first_code = code_blocks[0].start if code_blocks else len(text)
        headers = _headers(text, blocks)
        problem = _problem_before(text, min([first_code, *(h[0] for h in headers)]))
        if not code_blocks and not headers:  # prose alone is a refusal or chatter, not a problem
            raise ParseFailure("missing_problem", "neither a 'Problem' section nor any code")
        if problem is None:
            raise ParseFailure(
                "missing_problem", "no 'Problem' section, and no prose before the code"
            )
    problem = problem.strip()
    if "problem" in sections:
        # a problem section that holds the code too ends where its code starts
        inner = _blocks(problem)
        if inner:
            problem = problem[: inner[0].start].strip()
    if not problem:
        raise ParseFailure("empty_problem", "the 'Problem' section is empty")

    if "solution" in sections:
        solution = _code_of(sections["solution"], "solution")
    else:
        candidates = [b for b in code_blocks if not _looks_like_tests(b.code)]
        if not candidates:
            if code_blocks and not code_blocks[0].closed:
                raise ParseFailure("unclosed_solution_fence", "code block opened but never closed")
            raise ParseFailure("missing_solution", "no 'Solution' section and no solution code")
        if not candidates[0].closed:
            raise ParseFailure("unclosed_solution_fence", "code block opened but never closed")
        solution = _code_of(f"```python\n{candidates[0].code}\n```", "solution")

    if "tests" in sections:
        tests = _code_of(sections["tests"], "tests", join=True)
    else:
        rest = [b for b in code_blocks if b.closed and _looks_like_tests(b.code)]
        if rest:
            tests = _code_of(f"```python\n{rest[0].code}\n```", "tests")
        else:
            solution, tests = _split_code(solution)
            if not tests.strip():
                raise ParseFailure("missing_tests", "no 'Tests' section and no asserts in the code")
            if not solution.strip():
                raise ParseFailure("empty_solution", "the code is all tests")
    tests = normalize_tests(tests)
    tree = parse_code(tests)
    if tree is None:
        raise ParseFailure("tests_syntax_error", "the tests do not parse once normalised")
    if not any(is_assertion(node) for node in ast.walk(tree)):
        raise ParseFailure("tests_without_assert", "the tests contain no assert statement")
    return Parsed(problem=problem, solution=solution, tests=tests)


# --- tests the harness can run ---------------------------------------------------------------------


def _is_main_guard(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def _runs_a_framework(node: ast.stmt) -> bool:
    """`unittest.main()` or `pytest.main(...)`: they would exit the harness's main script."""
    if not isinstance(node, ast.Expr) or not isinstance(node.value, ast.Call):
        return False
    return ast.unparse(node.value.func) in ("unittest.main", "pytest.main", "main")


def normalize_tests(tests: str) -> str:
    """The tests as statements the harness runs and counts: calls for uncalled pytest-style test
    functions and for each test method of a TestCase; framework runners dropped; an unused
    `import pytest` dropped (the sandbox has only the standard library)."""
    tree = parse_code(tests)
    if tree is None:
        return tests
    lines = tests.splitlines()
    drop: set[int] = set()  # line numbers (1-based) to remove
    called = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    uses_pytest = any(isinstance(n, ast.Name) and n.id == "pytest" for n in ast.walk(tree))
    calls = []
    for node in tree.body:
        span = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        if isinstance(node, ast.Import) and [a.name for a in node.names] == ["pytest"]:
            if not uses_pytest:
                drop.update(span)
        elif _is_main_guard(node):
            kept = [s for s in node.body if not _runs_a_framework(s)]
            if not kept:
                drop.update(span)
            else:
                for s in node.body:
                    if _runs_a_framework(s):
                        drop.update(range(s.lineno, (s.end_lineno or s.lineno) + 1))
        elif _runs_a_framework(node):
            drop.update(span)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            required = len(node.args.args) - len(node.args.defaults)
            if node.name.startswith("test") and node.name not in called and required == 0:
                calls.append(f"{node.name}()")
        elif isinstance(node, ast.ClassDef) and _is_test_node(node):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test"):
                    calls.append(f"{node.name}({item.name!r}).debug()")
    if not drop and not calls:
        return tests
    kept_lines = [line for number, line in enumerate(lines, 1) if number not in drop]
    return "\n".join([*kept_lines, *calls]).strip("\n")


# --- the judge ---------------------------------------------------------------------------------

JudgeFailure = Literal["malformed_json", "missing_aspects", "non_integer", "out_of_range"]


def _key(name: str) -> str:
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


def _objects(text: str) -> list[dict[str, Any]]:
    """JSON objects in the text: those inside code fences first, then any other."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    sources = [b.code for b in _blocks(text)] + [text]
    for source in sources:
        at = source.find("{")
        while 0 <= at < len(source) and len(found) < 20:
            try:
                obj, length = decoder.raw_decode(source[at:])
            except (json.JSONDecodeError, RecursionError):
                at = source.find("{", at + 1)
                continue
            if isinstance(obj, dict):
                found.append(obj)
            at = source.find("{", at + max(length, 1))
    return found


def _number(value: Any) -> float | None:
    if isinstance(value, dict):  # {"score": 8, "reason": "..."}
        value = value.get("score", value.get("value"))
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(?:9|10))?\s*", value)
        return float(m.group(1)) if m else None
    return None


def parse_judgement(
    text: str, aspects: Sequence[str]
) -> tuple[dict[str, float] | None, str | None]:
    """({aspect: score 0-9}, None) for a usable answer, else (None, "reason: detail").

    Takes the first JSON object (in a code fence or not, prose around it) that names every aspect
    (keys compared case- and spacing-insensitively); a value may be 8, 8.0, "8", "8/10" or
    {"score": 8}. Without such an object, lines like `consistency: 8` serve.
    """
    wanted = {_key(a): a for a in aspects}
    objects = _objects(text)
    best_missing: list[str] | None = None
    for obj in objects:
        values = {_key(k): v for k, v in obj.items() if isinstance(k, str)}
        missing = [a for k, a in wanted.items() if k not in values]
        if missing:
            if best_missing is None or len(missing) < len(best_missing):
                best_missing = missing
            continue
        return _scores({a: values[k] for k, a in wanted.items()})
    lines = {}
    for k, aspect in wanted.items():
        m = re.search(rf"{re.escape(k).replace('_', '[ _-]')}\W{{0,6}}(\d+(?:\.\d+)?)", text, re.I)
        if m:
            lines[aspect] = m.group(1)
    if len(lines) == len(wanted):
        return _scores(lines)
    if best_missing is not None:
        return None, f"missing_aspects: {', '.join(best_missing)}"
    return None, "malformed_json: no JSON object naming the aspects"


def _scores(raw: dict[str, Any]) -> tuple[dict[str, float] | None, str | None]:
    scores = {}
    for aspect, value in raw.items():
        number = _number(value)
        if number is None:
            return None, f"non_integer: {aspect}={value!r}"
        if not 0 <= number <= 9:
            return None, f"out_of_range: {aspect}={number:g}"
        scores[aspect] = number
    return scores, None
