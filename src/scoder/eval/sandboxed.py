"""What evaluation sends into the sandbox, and how: the checker as marshal data, arguments as
marshal data, and batches of (code, tests) programs run under the eval's sandbox config.

Every test statement rebuilds the judging code (`scoder.eval.checker`) afresh from marshal data,
in a namespace of its own, with builtins captured before the sample is called: a sample cannot
redefine the checker between statements or fool it by rebinding builtins. Reading the harness's
frames (or gc) can still forge anything in-process, as `scoder.sandbox` says.
"""

from __future__ import annotations

import ast
import marshal
from collections.abc import Sequence
from pathlib import Path

from scoder.config import SandboxConfig
from scoder.eval import checker
from scoder.sandbox import ExecResult, run_many

# Names how samples are judged: bump it when a verdict could change. It is part of every eval
# stage's fingerprint and of the expected-output cache's file names.
EVALUATOR_VERSION = "scoder-eval-v1"

_SOURCE = Path(checker.__file__).read_text(encoding="utf-8")


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _checker_code(entry_point: str) -> bytes:
    """The checker's module code up to the definition of `entry_point`, as marshal data.

    The checker is laid out so that each entry point needs only what stands above it (guard, then
    check, then emit): a guard statement does not build the comparison code, nor a check
    statement the output encoding. Docstrings are left out: they would only be shipped. Compiled
    once here (the sandbox runs this same interpreter), so the host compiles a bytes literal per
    statement, not the checker's source; dont_inherit: this module's `from __future__` imports must
    not reach code that runs in the sandbox.
    """
    body: list[ast.stmt] = []
    for node in ast.parse(_SOURCE).body:
        if _is_docstring(node):
            continue
        if isinstance(node, ast.FunctionDef) and len(node.body) > 1 and _is_docstring(node.body[0]):
            node.body = node.body[1:]
        body.append(node)
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            break
    else:
        raise ValueError(f"scoder.eval.checker defines no {entry_point}()")
    module = ast.Module(body=body, type_ignores=[])
    return marshal.dumps(compile(module, "<scoder-eval>", "exec", dont_inherit=True))


def _fresh(entry_point: str) -> str:
    """An expression, for a test statement, that runs the checker (as far as `entry_point`) into a
    new namespace and gives `entry_point` from it."""
    code = _checker_code(entry_point)
    return (
        "(lambda ns: (__builtins__.exec(__builtins__.__import__('marshal').loads("
        f"{code!r}), ns), ns)[1])({{'__builtins__': __builtins__}})[{entry_point!r}]"
    )


GUARD = _fresh("guard")
CHECK = _fresh("check")
EMIT = _fresh("emit")


def blobs(inputs: list[list]) -> str:
    """A list expression of argument lists as marshal data, loaded afresh for every call: each
    call gets new argument objects whatever the last call did to its own, and the host never
    compiles the data as Python source."""
    return "[" + "".join(f"{marshal.dumps(list(a))!r}, " for a in inputs) + "]"


def run_batch(
    programs: Sequence[tuple[str, str]], sandbox: SandboxConfig, timeout_s: float
) -> list[ExecResult]:
    """(code, tests) programs under the eval's sandbox limits, all with the one `timeout_s`."""
    return run_many(
        programs,
        timeout_s=timeout_s,
        memory_mb=sandbox.memory_mb,
        workers=sandbox.workers,
        isolation=sandbox.isolation,
        prefork=sandbox.prefork,
        progress="executing (eval)",
    )
