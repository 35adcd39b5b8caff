"""The (code, tests) program the sandbox runs for one sample, by benchmark.

- HumanEval: the prompt's own `check(candidate)`, called with the entry point wrapped so that
  its results must be plain data (a returned object whose `__eq__` says yes to anything fails).
- MBPP (original): `test_setup_code`, then the `test_list` asserts (entry point wrapped the same
  way).
- MBPP+: two tests per sample: the base inputs, then base and plus inputs (EvalPlus's "base" and
  "plus" scores), each output compared with the expected one by `scoder.eval.checker`.
"""

from __future__ import annotations

import ast
import marshal
import secrets

from scoder.eval.benchmarks import BenchmarkTask
from scoder.eval.mbppplus import Expected, mbppplus_inputs, oracle_of
from scoder.eval.sandboxed import CHECK, GUARD, blobs


def humaneval_tests(task: BenchmarkTask) -> str:
    body = task.tests.rstrip()
    if body.endswith(f"check({task.entry_point})"):
        body = body[: -len(f"check({task.entry_point})")]
    return f"{body}\ncheck({GUARD}({task.entry_point}))\n"


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
        guarded = f"{GUARD}({task.entry_point})".encode()
        lines[name.lineno - 1] = (line[:start] + guarded + line[end:]).decode()
    return f"{task.setup}\n{''.join(lines)}\n"


def mbppplus_tests(task: BenchmarkTask, expected: Expected, nonce: str = "") -> str:
    """Two tests: the base inputs, then base and plus inputs; each statement holds all it needs
    (inputs and expected outputs as marshal data), the sample's function aside."""
    base, plus = mbppplus_inputs(task)
    tail = f"{task.atol!r}, {oracle_of(task)!r})\n"

    def statement(inputs: list, outputs: str) -> str:
        return f"assert {CHECK}({task.entry_point}, {blobs(inputs)}, {outputs}, {tail}"

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
        f"    for blob in {blobs(base + plus)}:\n"
        f"        out = fn(*marshal.loads(blob))\n"
        f"        {convert.get(oracle_of(task), 'pass')}\n"
        f"        outputs.append(out)\n"
        f"    return lambda: outputs\n"
        f"_scoder_gt_{nonce} = _scoder_oracle_{nonce}()\n"
        f"del _scoder_oracle_{nonce}\n"
        f"exec(compile({solution!r}, '<solution>', 'exec'), globals())\n"
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
