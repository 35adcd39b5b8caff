"""`scoder eval`: HumanEval, MBPP+ and MBPP by execution, pass@k.

A stage in two halves, both plain functions: `generate_solutions` (tasks + a backend -> the
model's answers, saved chunk by chunk, turned into programs by `extract_program`) and
`evaluate_solutions` (tasks + programs -> verdicts, each sample run in `scoder.sandbox` in a
process of its own). `run_eval` wires them to the run directory (RUN/eval/<benchmark>/results.json
and samples.jsonl) under the stage fingerprint of everything the scores depend on.

How each benchmark is judged:

- HumanEval: the prompt's own `check(candidate)`, called with the entry point wrapped so that
  its results must be plain data (a returned object whose `__eq__` says yes to anything fails).
- MBPP (original): `test_setup_code`, then the `test_list` asserts (entry point wrapped the same
  way).
- MBPP+: as EvalPlus does it. The entry point is called on every input (`base_input`, then
  `plus_input`); each output is compared with the canonical solution's output on the same input:
  `==`, then, if the expected output is a float (or a list/tuple of floats) or the task has an
  `atol`, "same type, same length, numpy-`allclose`" with rtol 1e-7 and the task's atol (1e-6 when
  0). EvalPlus's special oracles (set equality, output-is-not-None, four task-specific checks)
  apply, and the arguments EvalPlus stores lossily in JSON (tuples, sets, complex numbers) are
  turned back into those types. Two tests per sample: the base inputs, then base and plus inputs
  (EvalPlus's "base" and "plus" scores). The expected outputs come from the canonical solution,
  run in the sandbox and shipped back through its stderr (compressed, in 3 KB chunks), cached
  under $SCODER_CACHE/eval/expected/ by the benchmark file's hash; the two tasks whose outputs are
  megabytes (Mbpp/462, Mbpp/630) instead run the canonical solution inside each sample's process,
  before the sample's code.

Every test statement rebuilds the judging code afresh from marshal data, in a namespace of its
own, with builtins captured before the sample is called: a sample cannot redefine the checker
between statements or fool it by rebinding builtins. Reading the harness's frames (or gc) can still
forge anything in-process, as `scoder.sandbox` says.

The canonical solutions of a few tasks fail here: those tasks are listed in `EXCLUDED` with the
reason, left out of every score, and recorded in results.json. A canonical solution that fails at
run time on a task not listed is excluded the same way, with what happened as the reason (and a
warning).
"""

from __future__ import annotations

import ast
import hashlib
import json
import marshal
import math
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from scoder.benchmarks import BenchmarkTask, humaneval_path, load_benchmark
from scoder.errors import ScoderError

EVALUATOR_VERSION = "scoder-eval-v1"
Mode = Literal["chat", "completion"]

# --- excluded tasks --------------------------------------------------------------------------------

# Tasks whose canonical solution cannot serve as the oracle here. Found by running every canonical
# solution in the sandbox (tests/test_eval.py keeps checking that all the others score 1.0).
EXCLUDED: dict[str, dict[str, str]] = {
    "humaneval": {},
    "mbppplus": {
        "Mbpp/255": "canonical solution too slow and too big: one plus input asks for all "
        "1,663,740 combinations (with replacement) of 77 items, gigabytes of tuples; it ran past "
        "60 s",
        "Mbpp/599": "canonical solution too slow: sums range(1, n + 1) for n up to 10^8 (about "
        "30 s for its plus inputs)",
    },
    # (the test split only: 596 and 642, which the data's README also names, are outside it)
    "mbpp": {
        "Mbpp/341": "its asserts expect tuple(s) of a set s to come out in sorted order, "
        "which CPython does not give for {12, 13, 14, 15, 16}",
    },
}


# --- pass@k ----------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), computed as a product so large n does not overflow."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n (got n={n}, c={c})")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n (got n={n}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """pass@k averaged over tasks, for every k that no task has fewer samples than."""
    if not counts:
        return {}
    smallest = min(n for n, _ in counts)
    return {
        f"pass@{k}": round(sum(pass_at_k(n, c, k) for n, c in counts) / len(counts), 6)
        for k in sorted(set(ks))
        if k <= smallest
    }


# --- prompts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalTemplate:
    """How a task becomes a prompt. `humaneval` gets {prompt}; `mbpp` gets {problem},
    {entry_point} and {example} (the task's first assert)."""

    id: str
    kind: Mode
    humaneval: str
    mbpp: str
    system: str = ""

    @property
    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    def text(self, task: BenchmarkTask, benchmark: str) -> str:
        if benchmark == "humaneval":
            return self.humaneval.format(prompt=task.prompt)
        return self.mbpp.format(
            problem=task.prompt.strip(),
            entry_point=task.entry_point,
            example=first_assert(task.tests),
        )

    def chat(self, task: BenchmarkTask, benchmark: str) -> list[dict[str, str]]:
        text = self.text(task, benchmark)
        if self.kind == "completion":  # continued as the start of the answer
            return [{"role": "assistant", "content": text}]
        chat = [{"role": "system", "content": self.system}] if self.system else []
        return [*chat, {"role": "user", "content": text}]


EVAL_TEMPLATES: dict[str, EvalTemplate] = {
    t.id: t
    for t in (
        EvalTemplate(
            id="eval-chat-v1",
            kind="chat",
            humaneval="Complete the following Python function. Reply with the complete, "
            "self-contained function (with the imports it needs) in one ```python code block."
            "\n\n```python\n{prompt}```",
            mbpp="{problem}\n\nWrite a self-contained Python function `{entry_point}` that solves "
            "this problem. Your code should pass this test:\n\n```python\n{example}\n```\n\n"
            "Reply with the complete function (with the imports it needs) in one ```python code "
            "block.",
        ),
        EvalTemplate(
            id="eval-completion-v1",
            kind="completion",
            humaneval="{prompt}",
            mbpp='"""\n{problem}\n{example}\n"""\n',
        ),
    )
}


def first_assert(tests: str) -> str:
    for line in tests.splitlines():
        if line.lstrip().startswith("assert"):
            return line.strip()
    return ""


def backend_is_chat(backend: Any) -> bool:
    """Whether the backend's model takes chats (an instruction-tuned model with a chat template).

    A backend with a local tokenizer tells by that tokenizer's chat template; a backend without
    one (an API server) applies its own template to every request, so it takes chats."""
    tokenizer = getattr(backend, "tokenizer", None)
    return tokenizer is None or bool(getattr(tokenizer, "chat_template", None))


def pick_template(backend: Any, prompt: str, chat_id: str, completion_id: str) -> EvalTemplate:
    mode = prompt if prompt != "auto" else ("chat" if backend_is_chat(backend) else "completion")
    return EVAL_TEMPLATES[chat_id if mode == "chat" else completion_id]


# --- extracting the program from a model's answer ----------------------------------------------------

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


def _parses(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


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
        tree = _parses("".join(lines[:cut]))
        if tree is not None:
            return "".join(lines[:cut]), tree
    for cut in range(len(lines) - 1, 0, -1):
        tree = _parses("".join(lines[:cut]))
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
    tree = _parses(prompt)
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


# --- values shipped into and out of the sandbox ----------------------------------------------------


def decode_tagged(value: Any) -> Any:
    """The host side of the sandbox's `enc`: tagged JSON -> Python values."""
    if isinstance(value, list):
        return [decode_tagged(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ValueError(f"not a tagged value: {str(value)[:80]}")
    ((tag, body),) = value.items()
    if tag == "t":
        return tuple(decode_tagged(v) for v in body)
    if tag == "s":
        return {decode_tagged(v) for v in body}
    if tag == "f":
        return frozenset(decode_tagged(v) for v in body)
    if tag == "d":
        return {decode_tagged(k): decode_tagged(v) for k, v in body}
    if tag == "c":
        return complex(body[0], body[1])
    if tag == "b":
        return bytes.fromhex(body)
    raise ValueError(f"unknown tag {tag!r}")


# What runs inside the sandbox besides the sample: module-level code that every test statement
# executes afresh into a namespace of its own (see `_fresh`). It first copies what it needs out of
# `__builtins__` (reset by the harness before each statement, and not yet touched by the sample in
# this one), so neither a sample that rebinds `type` or `len` in its module nor one that patches
# `builtins` when called can change how its results are judged; and nothing a sample does while
# one statement calls it (rebinding `_scoder_check`, say) reaches the next statement.
_RUNTIME_BASE = r"""
import sys as _sys
type_, len_, isinstance_, abs_, set_, range_, repr_ = type, len, isinstance, abs, set, range, repr
all_, zip_, str_, int_, float_, bool_, bytes_ = all, zip, str, int, float, bool, bytes
list_, tuple_, dict_, frozenset_, complex_ = list, tuple, dict, frozenset, complex
BaseException_, AssertionError_, TypeError_ = BaseException, AssertionError, TypeError
scalars = {type_(None), bool_, int_, float_, complex_, str_, bytes_}
sequences = {list_, tuple_, set_, frozenset_}
dicts = {dict_}
collections = _sys.modules.get("collections")
if collections is not None:  # only the sample can have imported it
    for name in ("OrderedDict", "Counter", "defaultdict"):
        kind = collections.__dict__.get(name)
        if type_(kind) is type_ and dict_ in kind.__mro__:
            dicts.add(kind)
    if type_(collections.__dict__.get("deque")) is type_:
        sequences.add(collections.__dict__["deque"])
items = dict_.items
loads = _sys.modules["marshal"].loads


def plain(x):
    kind = type_(x)
    if kind in scalars:
        return True
    if kind in sequences:
        return all_(plain(v) for v in x)
    if kind in dicts:
        return all_(plain(k) and plain(v) for k, v in items(x))
    return False


def guard(fn):
    def guarded(*args, **kwargs):
        out = fn(*args, **kwargs)
        if not plain(out):
            raise AssertionError_("returned a %s, not plain data" % type_(out).__name__)
        return out

    return guarded
"""

_RUNTIME_CHECK = r"""
max_, sum_, round_ = max, sum, round
number = (bool_, int_, float_, complex_)


def is_floats(x):
    if type_(x) is float_:
        return True
    if isinstance_(x, (list_, tuple_)) and len_(x):
        return all_(type_(v) is float_ for v in x)
    return False


def close(a, b, atol):
    # numpy.allclose: |a - b| <= atol + rtol * |b|, rtol 1e-7, nan never close
    if isinstance_(a, number) and isinstance_(b, number):
        if a == b:
            return True
        d = abs_(a - b)
        return d == d and d <= atol + 1e-07 * abs_(b)
    if isinstance_(a, (list_, tuple_)) and isinstance_(b, (list_, tuple_)):
        return len_(a) == len_(b) and all_(close(x, y, atol) for x, y in zip_(a, b))
    return False


def surface_area(base_edge, height):
    slant = ((base_edge / 2) ** 2 + height ** 2) ** 0.5
    return round_(base_edge ** 2 + 4 * (base_edge * slant) / 2)


def digit_distance(a, b):
    a, b = str_(a), str_(b)
    width = max_(len_(a), len_(b))
    return sum_(abs_(int_(x) - int_(y)) for x, y in zip_(a.zfill(width), b.zfill(width)))


def same(out, exp, atol, oracle, blob):
    if oracle == "not_none":
        return out == exp if type_(out) is bool_ else exp == (out is not None)
    if not plain(out):
        return False
    if oracle == "set_eq":
        return set_(out) == exp
    exact = out == exp
    if oracle == "any":
        exact = True
    elif oracle == "or_zero":
        exact = exact or out == 0
    elif oracle == "surface_area":
        exact = exact or abs_(out - surface_area(*loads(blob))) <= atol
    elif oracle == "digit_distance":
        exact = exact or out == digit_distance(*loads(blob))
    tol = atol or (1e-06 if is_floats(exp) else 0)
    if exact or not tol:
        return exact
    if type_(out) is not type_(exp):
        return False
    if isinstance_(exp, (list_, tuple_)) and len_(out) != len_(exp):
        return False
    return close(out, exp, tol)


def check(fn, inputs, expected, atol, oracle):
    want = loads(expected) if type_(expected) is bytes_ else expected()
    for i in range_(len_(inputs)):
        out = fn(*loads(inputs[i]))
        try:
            ok = same(out, want[i], atol, oracle, inputs[i])
        except BaseException_ as e:
            ok, why = False, " (%s)" % type_(e).__name__
        else:
            why = ""
        if not ok:
            shown = repr_(out)[:120] if plain(out) else "a " + type_(out).__name__
            raise AssertionError_(
                "input %d: got %s, expected %s%s" % (i, shown, repr_(want[i])[:120], why)
            )
    return True
"""

_RUNTIME_EMIT = r"""
import json as _json
sorted_ = sorted


def enc(v):
    kind = type_(v)
    if v is None or kind in (bool_, int_, float_, str_):
        return v
    if kind is list_:
        return [enc(x) for x in v]
    if kind is tuple_:
        return {"t": [enc(x) for x in v]}
    if isinstance_(v, (set_, frozenset_)):
        tag = "s" if isinstance_(v, set_) else "f"
        return {tag: sorted_((enc(x) for x in v), key=lambda e: _json.dumps(e, sort_keys=True))}
    if isinstance_(v, dict_):
        return {"d": [[enc(k), enc(x)] for k, x in items(v)]}
    if kind is complex_:
        return {"c": [v.real, v.imag]}
    if kind is bytes_:
        return {"b": v.hex()}
    raise TypeError_(
        "cannot compare a %s.%s outside its process" % (kind.__module__, kind.__qualname__)
    )


def emit(fn, inputs, oracle, chunk, size):
    # the canonical solution's outputs on every input, tagged JSON, compressed, one `size`-long
    # chunk of it written to stderr (the sandbox's only channel back)
    import base64, hashlib, os, time, zlib

    _sys.stderr = _sys.stdout  # the canonical solution's own chatter must not mix in
    outputs, error, spent = [], None, 0.0
    for i, blob in enumerate(inputs):
        args = loads(blob)
        started = time.perf_counter()
        try:
            out = fn(*args)
            spent += time.perf_counter() - started
            if oracle == "not_none":
                out = out is not None
            elif oracle == "set_eq":
                out = set_(out)
            outputs.append(enc(out))
        except BaseException_ as e:
            error = ("input %d: %s: %s" % (i, type_(e).__name__, e))[:300]
            break
    payload = _json.dumps({"outputs": outputs, "error": error}, sort_keys=True).encode()
    blob = base64.b64encode(zlib.compress(payload, 9)).decode()
    digest = hashlib.sha256(payload).hexdigest()[:16]
    count = max_(1, -(-len_(blob) // size))
    part = blob[chunk * size : (chunk + 1) * size]
    os.write(2, ("\n@@scoder %d %d %s %r@@%s@@\n" % (chunk, count, digest, spent, part)).encode())
    return True
"""


def _fresh(*parts: str) -> str:
    # compiled once here and shipped as marshal data (the sandbox runs this same interpreter): the
    # host compiles a bytes literal per statement, not the runtime's source
    code = marshal.dumps(compile("".join(parts), "<scoder-eval>", "exec"))
    return (
        "(lambda ns: (__builtins__.exec(__builtins__.__import__('marshal').loads("
        f"{code!r}), ns), ns)[1])({{'__builtins__': __builtins__}})"
    )


_GUARD = _fresh(_RUNTIME_BASE) + "['guard']"
_CHECK = _fresh(_RUNTIME_BASE, _RUNTIME_CHECK) + "['check']"
_EMIT = _fresh(_RUNTIME_BASE, _RUNTIME_CHECK, _RUNTIME_EMIT) + "['emit']"


# --- MBPP+ inputs and oracles ----------------------------------------------------------------------


def _tuples(x: Any) -> Any:
    return tuple(x)


def _deep_tuples(x: Any) -> Any:
    return tuple(_deep_tuples(v) for v in x) if isinstance(x, list) else x


def _each(convert: Callable[[Any], Any]) -> Callable[[list], list]:
    return lambda args: [convert(a) for a in args]


def _items(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda arg: [convert(v) for v in arg]


def _first(convert: Callable[[Any], Any]) -> Callable[[list], list]:
    return lambda args: [convert(args[0]), *args[1:]]


def _second(convert: Callable[[Any], Any]) -> Callable[[list], list]:
    return lambda args: [args[0], convert(args[1]), *args[2:]]


def _set_or_empty_dict(x: Any) -> Any:
    # EvalPlus stores Mbpp/115's empty sets as [] and reads them back as {} (an empty dict)
    return set(x) if isinstance(x, list) and x else {}


# EvalPlus's MBPP+ file is JSON, which has no tuples, sets or complex numbers: for these tasks
# EvalPlus converts the stored arguments back before calling anything (task number -> how the
# argument list is converted). Same conversions, our own table.
_ARG_CONVERSIONS: dict[int, Callable[[list], list]] = {
    **dict.fromkeys(
        [2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630]
        + [726, 740, 744, 809],
        _each(_tuples),
    ),
    **dict.fromkeys(
        [63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780],
        _each(_items(_tuples)),
    ),
    **dict.fromkeys([75, 413, 444, 753], _first(_items(_tuples))),
    **dict.fromkeys([106, 750], _second(_tuples)),
    115: _first(_items(_set_or_empty_dict)),
    124: lambda args: [float(args[0]), complex(args[1])],
    **dict.fromkeys([250, 405, 446, 617, 720, 763, 808, 307], _first(_tuples)),
    **dict.fromkeys([259, 401, 445], _each(lambda a: tuple(tuple(v) for v in a))),
    278: _first(lambda a: tuple(tuple(v) if isinstance(v, list) else v for v in a)),
    722: _first(lambda d: {k: tuple(v) for k, v in d.items()}),
    252: lambda args: [complex(args[0])],
    **dict.fromkeys([580, 615, 791], lambda args: list(_deep_tuples(args))),
}

# EvalPlus's special oracles, by entry point (MBPP+ only).
_ORACLES: dict[str, str] = {
    # the output is compared only on whether it is None (re.Match objects cannot be compared)
    **dict.fromkeys(["check_str", "text_match_three", "text_starta_endb"], "not_none"),
    # any order (and multiplicity) of the same elements is right
    **dict.fromkeys(
        [
            "similar_elements",
            "find_char_long",
            "common_in_nested_lists",
            "extract_singly",
            "larg_nnum",
            "intersection_array",
            "find_dissimilar",
            "Diff",
        ],
        "set_eq",
    ),
    "are_equivalent": "any",  # Mbpp/164: the canonical solution disagrees with the task's asserts
    "sum_div": "or_zero",  # Mbpp/295
    "surface_Area": "surface_area",  # Mbpp/581: two readings of "height"
    "digit_distance_nums": "digit_distance",  # Mbpp/558: numbers of different lengths
}


def mbppplus_inputs(task: BenchmarkTask) -> tuple[list[list], list[list]]:
    """Base and plus argument lists of an MBPP+ task, with EvalPlus's type conversions."""
    number = int(task.task_id.rsplit("/", 1)[-1])
    convert = _ARG_CONVERSIONS.get(number, list)
    return [convert(a) for a in task.base_inputs], [convert(a) for a in task.plus_inputs]


def oracle_of(task: BenchmarkTask) -> str:
    return _ORACLES.get(task.entry_point, "equal")


# --- test programs ---------------------------------------------------------------------------------


def _blobs(inputs: list[list]) -> str:
    # marshal data, loaded afresh for every call: each call gets new argument objects whatever
    # the last call did to its own, and the host never compiles the data as Python source
    return "[" + "".join(f"{marshal.dumps(list(a))!r}, " for a in inputs) + "]"


def humaneval_tests(task: BenchmarkTask) -> str:
    body = task.tests.rstrip()
    if body.endswith(f"check({task.entry_point})"):
        body = body[: -len(f"check({task.entry_point})")]
    return f"{body}\ncheck({_GUARD}({task.entry_point}))\n"


def mbpp_tests(task: BenchmarkTask) -> str:
    """The setup code and the asserts, every call of the entry point `f(x)` made
    `<fresh guard>(f)(x)`."""
    lines = task.tests.splitlines(keepends=True)
    calls = [
        node.func
        for node in ast.walk(ast.parse(task.tests))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == task.entry_point
    ]
    # from the last call back, so the offsets of earlier ones stay right (offsets count bytes)
    for name in sorted(calls, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        line = lines[name.lineno - 1].encode()
        start, end = name.col_offset, name.end_col_offset
        guarded = f"{_GUARD}({task.entry_point})".encode()
        lines[name.lineno - 1] = (line[:start] + guarded + line[end:]).decode()
    return f"{task.setup}\n{''.join(lines)}\n"


@dataclass
class Expected:
    """What an MBPP+ task's samples are compared with."""

    outputs: list | None = None  # plain values, one per input (base then plus)
    seconds: float = 0.0  # the canonical solution's time on all inputs
    error: str | None = None  # why the canonical solution cannot be the oracle
    # outputs too big to ship back through the sandbox's 4 KB of stderr (a few MB for Mbpp/630):
    # the canonical solution runs again inside each sample's own process, before the sample
    in_process: bool = False


def mbppplus_tests(task: BenchmarkTask, expected: Expected, nonce: str = "") -> str:
    """Two tests: the base inputs, then base and plus inputs; each statement holds all it needs
    (inputs and expected outputs as marshal data), the sample's function aside."""
    base, plus = mbppplus_inputs(task)
    tail = f"{task.atol!r}, {oracle_of(task)!r})\n"

    def statement(inputs: list, outputs: str) -> str:
        return f"assert {_CHECK}({task.entry_point}, {_blobs(inputs)}, {outputs}, {tail}"

    if expected.in_process:
        gt = f"_scoder_gt_{nonce}"
        return statement(base, gt) + statement(base + plus, gt)
    outputs = expected.outputs or []
    return statement(base, repr(marshal.dumps(outputs[: len(base)]))) + statement(
        base + plus, repr(marshal.dumps(outputs))
    )


def in_process_oracle(task: BenchmarkTask, solution: str, nonce: str) -> str:
    """The sample's code, preceded by the canonical solution computing the expected outputs in
    its own namespace (before any of the sample's code has run). The outputs are kept under a
    name with a random part the sample cannot know in advance."""
    base, plus = mbppplus_inputs(task)
    convert = {"not_none": "out = out is not None", "set_eq": "out = set(out)"}
    return (
        f"def _scoder_oracle_{nonce}():\n"
        f"    import marshal\n"
        f"    ns = {{'__name__': 'canonical'}}\n"
        f"    exec(compile({task.canonical_solution!r}, '<canonical>', 'exec'), ns)\n"
        f"    fn, outputs = ns[{task.entry_point!r}], []\n"
        f"    for blob in {_blobs(base + plus)}:\n"
        f"        out = fn(*marshal.loads(blob))\n"
        f"        {convert.get(oracle_of(task), 'pass')}\n"
        f"        outputs.append(out)\n"
        f"    return lambda: outputs\n"
        f"_scoder_gt_{nonce} = _scoder_oracle_{nonce}()\n"
        f"del _scoder_oracle_{nonce}\n"
        f"exec(compile({solution!r}, '<solution>', 'exec'), globals())\n"
    )


def expected_tests(task: BenchmarkTask, chunk: int) -> str:
    base, plus = mbppplus_inputs(task)
    return (
        f"assert {_EMIT}({task.entry_point}, {_blobs(base + plus)}, "
        f"{oracle_of(task)!r}, {chunk}, {_CHUNK_CHARS})\n"
    )


def program(
    benchmark: str, task: BenchmarkTask, solution: str, expected: Expected | None = None
) -> tuple[str, str]:
    """The (code, tests) pair the sandbox runs for one sample."""
    if benchmark == "humaneval":
        return solution, humaneval_tests(task)
    if benchmark == "mbpp":
        return solution, mbpp_tests(task)
    expected = expected or Expected(outputs=[])
    if expected.in_process:
        nonce = secrets.token_hex(8)
        return in_process_oracle(task, solution, nonce), mbppplus_tests(task, expected, nonce)
    return solution, mbppplus_tests(task, expected)


# --- expected outputs (MBPP+) ----------------------------------------------------------------------

_CHUNK_CHARS = 3000  # of base64 per run: the sandbox keeps 4 KB of stderr
_MAX_CHUNKS = 4  # more than this: the outputs are recomputed inside each sample's process
_MARK = re.compile(r"@@scoder (\d+) (\d+) ([0-9a-f]{16}) (\S+)@@([A-Za-z0-9+/=]*)@@")


def _expected_cache_path(benchmark_sha: str) -> Path:
    from scoder.models.loading import scoder_cache_dir

    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    name = f"mbppplus-{benchmark_sha.removeprefix('sha256:')[:16]}-{EVALUATOR_VERSION}-{py}.json"
    return scoder_cache_dir() / "eval" / "expected" / name


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def expected_outputs(
    tasks: Sequence[BenchmarkTask],
    benchmark_sha: str,
    sandbox: Any,
    timeout_s: float,
) -> dict[str, Expected]:
    """The canonical solution's output on every input of every task, computed in the sandbox (and
    cached by benchmark file hash: a second eval reads them back)."""
    from scoder.store import atomic_write_text

    path = _expected_cache_path(benchmark_sha)
    cache = _read_cache(path)
    todo = [t for t in tasks if t.task_id not in cache]
    if todo:
        cache.update(_compute_expected(todo, sandbox, timeout_s))
        merged = {**_read_cache(path), **cache}
        atomic_write_text(path, json.dumps(merged, separators=(",", ":")))
    out = {}
    for task in tasks:
        entry = cache[task.task_id]
        outputs = None
        if entry.get("outputs") is not None:
            outputs = decode_tagged(entry["outputs"])
        out[task.task_id] = Expected(
            outputs, entry.get("seconds", 0.0), entry.get("error"), entry.get("in_process", False)
        )
    return out


def _compute_expected(tasks: Sequence[BenchmarkTask], sandbox: Any, timeout_s: float) -> dict:
    first = _run([(t.canonical_solution, expected_tests(t, 0)) for t in tasks], sandbox, timeout_s)
    parts: dict[str, dict[int, tuple]] = {}
    found: dict[str, dict] = {}
    more: list[tuple[BenchmarkTask, int]] = []
    for task, result in zip(tasks, first):
        mark = _mark(result)
        if isinstance(mark, str):
            found[task.task_id] = {"error": mark}
            continue
        if mark[1] > _MAX_CHUNKS:
            found[task.task_id] = {"in_process": True, "seconds": round(mark[3], 4)}
            continue
        parts[task.task_id] = {0: mark}
        more += [(task, k) for k in range(1, mark[1])]
    if more:
        rest = _run(
            [(t.canonical_solution, expected_tests(t, k)) for t, k in more], sandbox, timeout_s
        )
        for (task, k), result in zip(more, rest):
            mark = _mark(result)
            if isinstance(mark, str):
                found[task.task_id] = {"error": mark}
            elif task.task_id in parts:
                parts[task.task_id][k] = mark
    for task_id, got in parts.items():
        if task_id not in found:
            found[task_id] = _assemble(got)
    return found


def _mark(result: Any) -> tuple[int, int, str, float, str] | str:
    if result.status != "passed":
        what = "too slow" if result.status == "timeout" else f"{result.status}"
        return f"canonical solution {what}: {result.detail}"[:400]
    match = _MARK.search(result.stderr)
    if not match:
        return "canonical solution: no outputs came back from the sandbox"
    chunk, count, digest, seconds, data = match.groups()
    return int(chunk), int(count), digest, float(seconds), data


def _assemble(parts: dict[int, tuple]) -> dict:
    import base64
    import zlib

    count, digest, seconds = parts[0][1], parts[0][2], parts[0][3]
    if len(parts) != count or any(p[2] != digest for p in parts.values()):
        return {"error": "canonical solution gives different outputs from run to run"}
    blob = "".join(parts[k][4] for k in range(count))
    payload = zlib.decompress(base64.b64decode(blob))
    if hashlib.sha256(payload).hexdigest()[:16] != digest:
        return {"error": "canonical outputs were damaged on the way back"}
    data = json.loads(payload)
    if data["error"]:
        return {"error": f"canonical solution failed on {data['error']}", "seconds": seconds}
    return {"outputs": data["outputs"], "seconds": round(seconds, 4), "error": None}


# --- execution ---------------------------------------------------------------------------------------


def _run(programs: list[tuple[str, str]], sandbox: Any, timeout_s: float) -> list:
    from scoder.sandbox import run_many

    return run_many(
        programs,
        timeout_s=timeout_s,
        memory_mb=sandbox.memory_mb,
        workers=sandbox.workers,
        isolation=sandbox.isolation,
    )


def _run_grouped(programs: list[tuple[str, str]], timeouts: list[float], sandbox: Any) -> list:
    """run_many takes one timeout: programs that need a longer one run as their own batch."""
    results: list[Any] = [None] * len(programs)
    for limit in sorted(set(timeouts)):
        indices = [i for i, t in enumerate(timeouts) if t == limit]
        for i, result in zip(indices, _run([programs[i] for i in indices], sandbox, limit)):
            results[i] = result
    return results


class SampleResult(BaseModel):
    """One sample's verdict (a row of samples.jsonl, EvalPlus format + ours)."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    sample_index: int
    solution: str
    completion: str | None = None  # the model's raw answer (or a samples file's completion)
    extraction: str | None = None  # how the program was found in the answer
    finish_reason: str | None = None
    completion_tokens: int | None = None
    passed: bool  # base tests (HumanEval, MBPP: all the tests)
    plus_passed: bool | None = None  # MBPP+: base and plus inputs
    status: str
    tests_passed: int
    tests_total: int
    detail: str = ""
    wall_s: float


@dataclass
class EvalOutcome:
    samples: list[SampleResult]
    excluded: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    isolation: str = ""


def evaluate_solutions(
    benchmark: str,
    tasks: Sequence[BenchmarkTask],
    solutions: dict[str, list[dict]],
    sandbox: Any,
    *,
    benchmark_sha: str = "",
    time_factor: float = 4.0,
    canonical_timeout_s: float = 60.0,
) -> EvalOutcome:
    """Run every sample of every task in the sandbox; `solutions` maps task id -> rows with at
    least `solution` (a complete program). Tasks without rows are skipped."""
    started = time.perf_counter()
    excluded: dict[str, str] = {}
    expected: dict[str, Expected] = {}
    seconds: dict[str, float] = {}
    present = [t for t in tasks if solutions.get(t.task_id)]
    if benchmark == "mbppplus" and present:
        expected = expected_outputs(present, benchmark_sha, sandbox, canonical_timeout_s)
        for task_id, exp in expected.items():
            if exp.error:
                excluded[task_id] = exp.error
        seconds["expected_outputs_s"] = round(time.perf_counter() - started, 3)
    jobs, timeouts = [], []
    for task in present:
        if task.task_id in excluded:
            continue
        exp = expected.get(task.task_id)
        limit = _time_limit(sandbox.timeout_s, exp, time_factor)
        for j, row in enumerate(solutions[task.task_id]):
            row = {"sample_index": j, **row}
            jobs.append((task, row, program(benchmark, task, row["solution"], exp)))
            timeouts.append(limit)
    run_started = time.perf_counter()
    results = _run_grouped([j[2] for j in jobs], timeouts, sandbox)
    seconds["execution_s"] = round(time.perf_counter() - run_started, 3)
    samples = [
        _sample_result(benchmark, task, row, result)
        for (task, row, _), result in zip(jobs, results)
    ]
    isolation = results[0].isolation if results else ""
    return EvalOutcome(samples, excluded, seconds, isolation)


def _time_limit(base: float, exp: Expected | None, factor: float) -> float:
    """A sample may take `factor` times the canonical solution's time (plus that time again when
    the canonical solution runs in its process), never less than `base`. Longer limits are
    rounded up to base * 2^k: programs with the same limit share a batch of run_many."""
    if exp is None:
        return float(base)
    needed = (factor + exp.in_process) * exp.seconds + 1
    if needed <= base:
        return float(base)
    return float(base * 2 ** math.ceil(math.log2(needed / base)))


def _sample_result(benchmark: str, task: BenchmarkTask, row: dict, result: Any) -> SampleResult:
    if benchmark == "mbppplus":
        # test 1 = the base inputs, test 2 = base and plus inputs (the harness reports how many
        # passed; a sample passing test 2 passed the base inputs in it too)
        passed, plus = result.tests_passed >= 1, result.tests_passed == 2
    else:
        passed, plus = result.status == "passed", None
    return SampleResult(
        task_id=task.task_id,
        sample_index=row["sample_index"],
        solution=row["solution"],
        completion=row.get("completion"),
        extraction=row.get("extraction"),
        finish_reason=row.get("finish_reason"),
        completion_tokens=row.get("completion_tokens"),
        passed=passed,
        plus_passed=plus,
        status=result.status,
        tests_passed=result.tests_passed,
        tests_total=result.tests_total,
        detail=result.detail,
        wall_s=round(result.wall_s, 4),
    )


# --- samples files ---------------------------------------------------------------------------------


def load_samples(
    path: Path, benchmark: str, tasks: Sequence[BenchmarkTask]
) -> dict[str, list[dict]]:
    """An EvalPlus-format samples file: JSONL rows with `task_id` and `solution` (a complete
    program) or `completion` (HumanEval: appended to the prompt). Several rows of one task are its
    n samples. Malformed lines and unknown task ids are errors naming the line."""
    if not path.is_file():
        raise ScoderError(f"samples file not found: {path}")
    by_id = {t.task_id: t for t in tasks}
    excluded = EXCLUDED.get(benchmark, {})
    out: dict[str, list[dict]] = {}
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ScoderError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("task_id"), str):
                raise ScoderError(f"{where}: a samples row needs a string task_id")
            task_id = row["task_id"]
            if task_id in excluded:
                continue
            task = by_id.get(task_id)
            if task is None:
                raise ScoderError(
                    f"{where}: unknown task id {task_id!r} for benchmark {benchmark} "
                    f"(ids look like {next(iter(by_id))!r})"
                )
            solution, completion = row.get("solution"), row.get("completion")
            if isinstance(solution, str):
                code = solution
            elif isinstance(completion, str):
                code = task.prompt + completion if benchmark == "humaneval" else completion
            else:
                raise ScoderError(f"{where}: a samples row needs a string solution or completion")
            samples = out.setdefault(task_id, [])
            samples.append(
                {
                    "solution": code,
                    "completion": completion if isinstance(completion, str) else None,
                    "sample_index": len(samples),
                }
            )
    if not out:
        raise ScoderError(f"{path} holds no samples for benchmark {benchmark}")
    return out


# --- generation ------------------------------------------------------------------------------------


class GeneratedSample(BaseModel):
    """A model's raw answer to one task (saved as generation goes, so a killed eval resumes)."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    sample_index: int
    raw: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def generate_solutions(
    tasks: Sequence[BenchmarkTask],
    benchmark: str,
    backend: Any,
    template: EvalTemplate,
    cfg: Any,
    *,
    parts_dir: Path,
    random_seed: int = 0,
) -> tuple[dict[str, list[dict]], float, int]:
    """n answers per task from the backend, turned into programs. Returns solutions rows by task id,
    the generation seconds of this call, and the tokens it generated."""
    from scoder.models.base import SamplingParams
    from scoder.store import resumable_chunks

    spent = {"seconds": 0.0, "tokens": 0}

    def produce(number: int, chunk: Sequence[BenchmarkTask]) -> list[GeneratedSample]:
        params = SamplingParams.for_chunk(cfg, random_seed, number)
        started = time.perf_counter()
        outputs = backend.generate([template.chat(t, benchmark) for t in chunk], cfg.n, params)
        spent["seconds"] += time.perf_counter() - started
        rows = [
            GeneratedSample(
                task_id=task.task_id,
                sample_index=j,
                raw=c.text,
                finish_reason=c.finish_reason,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
            )
            for task, completions in zip(chunk, outputs)
            for j, c in enumerate(completions)
        ]
        spent["tokens"] += sum(r.completion_tokens for r in rows)
        return rows

    by_id = {t.task_id: t for t in tasks}
    solutions: dict[str, list[dict]] = {}
    for _, rows, _ in resumable_chunks(tasks, cfg.chunk_size, parts_dir, GeneratedSample, produce):
        for r in rows:
            task = by_id[r.task_id]
            prefix = template.text(task, benchmark) if template.kind == "completion" else ""
            code, how = extract_program(r.raw, task, benchmark, prefix)
            solutions.setdefault(r.task_id, []).append(
                {
                    "solution": code,
                    "completion": r.raw,
                    "extraction": how,
                    "sample_index": r.sample_index,
                    "finish_reason": r.finish_reason,
                    "completion_tokens": r.completion_tokens,
                }
            )
    return solutions, spent["seconds"], spent["tokens"]


# --- the stage ---------------------------------------------------------------------------------------


def benchmark_file(config: Any, benchmark: str) -> Path:
    path = getattr(config.benchmark_files, benchmark)
    if path is None and benchmark == "humaneval":
        return humaneval_path()
    if path is None:
        raise ScoderError(
            f"benchmark {benchmark!r} needs a file: set benchmark_files.{benchmark} in the config "
            f"(--set benchmark_files.{benchmark}=PATH)"
        )
    if not Path(path).is_file():
        raise ScoderError(f"benchmark file for {benchmark} not found: {path}")
    return Path(path)


def summarize(benchmark: str, samples: Sequence[SampleResult], ks: Sequence[int]) -> dict:
    """pass@k (base; plus for MBPP+) and the per-task table."""
    by_task: dict[str, list[SampleResult]] = {}
    for s in samples:
        by_task.setdefault(s.task_id, []).append(s)
    per_task, base_counts, plus_counts = [], [], []
    for task_id, rows in by_task.items():
        n, c = len(rows), sum(r.passed for r in rows)
        base_counts.append((n, c))
        entry: dict[str, Any] = {"task_id": task_id, "n": n, "base_correct": c}
        if benchmark == "mbppplus":
            cp = sum(bool(r.plus_passed) for r in rows)
            plus_counts.append((n, cp))
            entry["plus_correct"] = cp
        entry["samples"] = [
            {
                "index": r.sample_index,
                "passed": r.passed,
                **({"plus_passed": r.plus_passed} if benchmark == "mbppplus" else {}),
                "status": r.status,
                "detail": r.detail,
            }
            for r in rows
        ]
        per_task.append(entry)
    pass_k = {"base": mean_pass_at_k(base_counts, ks)}
    if benchmark == "mbppplus":
        pass_k["plus"] = mean_pass_at_k(plus_counts, ks)
    return {
        "pass_at_k": pass_k,
        "statuses": dict(Counter(s.status for s in samples)),
        "per_task": per_task,
    }


@dataclass
class BenchmarkRun:
    benchmark: str
    results: dict
    results_path: Path


def _decoding(cfg: Any, random_seed: int) -> dict:
    keys = ("n", "temperature", "top_p", "max_new_tokens")
    return {**{k: getattr(cfg, k) for k in keys}, "random_seed": random_seed}


def _stage_fingerprint(cfg: Any, **parts: Any) -> str:
    """Everything the scores depend on: a different one into the same run directory is refused."""
    from scoder.config import fingerprint

    return fingerprint(
        {
            "evaluator": EVALUATOR_VERSION,
            **parts,
            "limit": cfg.limit,
            "sandbox": cfg.sandbox.model_dump(mode="json"),
            "time_factor": cfg.time_factor,
            "canonical_timeout_s": cfg.canonical_timeout_s,
        }
    )


def _results(benchmark: str, summary: dict, outcome: EvalOutcome, cfg: Any, **fields: Any) -> dict:
    n_per_task = sorted({t["n"] for t in summary["per_task"]})
    return {
        "benchmark": benchmark,
        **{k: v for k, v in fields.items() if k not in ("timings", "isolation", "excluded")},
        "n": n_per_task[0] if len(n_per_task) == 1 else n_per_task,
        "tasks": len(summary["per_task"]),
        "pass_at_k": summary["pass_at_k"],
        "excluded": {**fields["excluded"], **outcome.excluded},
        "statuses": summary["statuses"],
        "sandbox": {
            **cfg.sandbox.model_dump(mode="json"),
            "isolation": outcome.isolation or fields["isolation"],
            "time_factor": cfg.time_factor,
        },
        "timings": {**fields["timings"], **outcome.seconds},
        "per_task": summary["per_task"],
    }


def run_eval(
    config: Any,
    benchmark: str,
    *,
    samples_path: Path | None = None,
    force: bool = False,
    backend: Any = None,
) -> BenchmarkRun:
    """`scoder eval` for one benchmark: generate (or read samples), execute, write
    RUN/eval/<benchmark>/results.json and samples.jsonl."""
    from scoder import __version__
    from scoder.sandbox import available_isolation
    from scoder.store import RunDir, file_digest, write_json, write_jsonl

    cfg = config.eval
    started = time.perf_counter()
    path = benchmark_file(config, benchmark)
    bench_sha = file_digest(path)
    excluded = EXCLUDED.get(benchmark, {})
    every = [t for t in load_benchmark(benchmark, path) if t.task_id not in excluded]
    tasks = every[: cfg.limit] if cfg.limit else every
    isolation = cfg.sandbox.isolation
    isolation = available_isolation() if isolation == "auto" else isolation
    template, decoding = None, None
    if samples_path is not None:
        chosen = {t.task_id for t in tasks}  # a file's other tasks are fine, and left out
        solutions = load_samples(samples_path, benchmark, every)
        solutions = {k: v for k, v in solutions.items() if k in chosen}
        sha = file_digest(samples_path)
        source: dict[str, Any] = {"samples_file": str(samples_path), "sha256": sha}
        model: dict[str, Any] = {"id": f"samples:{samples_path.name}", "digest": sha}
    else:
        from scoder.models import load_backend, log_requests

        backend = backend or load_backend(config.model)
        model = backend.describe()
        template = pick_template(backend, cfg.prompt, cfg.chat_template, cfg.completion_template)
        decoding = _decoding(cfg, config.random_seed)
        source = {"model": model["id"]}
    stage = f"eval/{benchmark}"
    stage_fp = _stage_fingerprint(
        cfg,
        benchmark=bench_sha,
        excluded=sorted(excluded),
        model_digest=model.get("digest"),
        template=template.digest if template else None,
        decoding=decoding,
        chunk_size=cfg.chunk_size if template else None,
        isolation=isolation,
    )
    run = RunDir(config.run_dir)
    with run.stage(stage, config=config, fingerprint=stage_fp, force=force) as record:
        out = run.stage_dir(stage)
        generation_s, tokens = 0.0, 0
        if template is not None:
            log_requests(backend, out)
            solutions, generation_s, tokens = generate_solutions(
                tasks, benchmark, backend, template, cfg, parts_dir=out / "parts",
                random_seed=config.random_seed,
            )  # fmt: skip
            model = backend.describe()  # with the token usage (and cost) of API backends
        outcome = evaluate_solutions(
            benchmark, tasks, solutions, cfg.sandbox, benchmark_sha=bench_sha,
            time_factor=cfg.time_factor, canonical_timeout_s=cfg.canonical_timeout_s,
        )  # fmt: skip
        for task_id, why in outcome.excluded.items():
            print(f"scoder eval: {task_id} excluded: {why}", file=sys.stderr)
        summary = summarize(benchmark, outcome.samples, cfg.k)
        results = _results(
            benchmark,
            summary,
            outcome,
            cfg,
            benchmark_file={"path": str(path), "sha256": bench_sha},
            evaluator=EVALUATOR_VERSION,
            scoder_version=__version__,
            model=model,
            source=source,
            prompt=None
            if template is None
            else {"mode": template.kind, "template": template.id, "digest": template.digest},
            decoding=decoding,
            tasks_without_samples=sum(t.task_id not in solutions for t in tasks),
            excluded=excluded,
            isolation=isolation,
            timings={
                "generation_s": round(generation_s, 3),
                "generated_tokens": tokens,
                "total_s": round(time.perf_counter() - started, 3),
            },
        )
        write_jsonl(out / "samples.jsonl", outcome.samples)
        results_path = out / "results.json"
        write_json(results_path, results)
        record.counts = {
            "tasks": results["tasks"],
            "samples": len(outcome.samples),
            "excluded": len(results["excluded"]),
            **{
                f"{split} {name}": value
                for split, values in summary["pass_at_k"].items()
                for name, value in values.items()
            },
        }
        record.info.update(
            {
                "model": model,
                "benchmark_file": results["benchmark_file"],
                "results": str(results_path),
                "throughput": {
                    "generated_tokens": tokens,
                    "generation_seconds": round(generation_s, 3),
                    "tokens_per_second": round(tokens / generation_s, 2) if generation_s else 0.0,
                },
            }
        )
    return BenchmarkRun(benchmark, results, results_path)


__all__ = [
    "EVAL_TEMPLATES",
    "EXCLUDED",
    "EvalTemplate",
    "SampleResult",
    "backend_is_chat",
    "evaluate_solutions",
    "extract_program",
    "generate_solutions",
    "load_samples",
    "mean_pass_at_k",
    "pass_at_k",
    "run_eval",
]
