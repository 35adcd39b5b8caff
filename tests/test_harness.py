"""The in-sandbox harness (`scoder.sandbox.harness`), in process: its core `run` with a recording
`report` and a `finish` that raises, and the rules the shipped program keeps. tests/test_sandbox.py
runs the same program in real sandboxed processes."""

from __future__ import annotations

import ast
import builtins
import dis
import subprocess
import sys
from pathlib import Path

import pytest

from scoder.sandbox import harness, isolation, split_tests, zygote

ADD = "def add(a, b):\n    return a + b\n"
BOOM = "def boom(exc):\n    raise exc\n"


class Finished(Exception):
    """The final record: in the sandbox, `finish` exits the process instead."""


@pytest.fixture(autouse=True)
def restore_interpreter():
    """`run` resets builtins and clears trace hooks, as it must in the sandbox: put them back."""
    saved = dict(builtins.__dict__)
    trace, profile = sys.gettrace(), sys.getprofile()
    yield
    builtins.__dict__.clear()
    builtins.__dict__.update(saved)
    sys.settrace(trace)
    sys.setprofile(profile)


def run(code: str, tests: str) -> tuple[list[str], str]:
    """The records `run` reports, and its final one."""
    plan = split_tests(tests)
    assert not plan.error, plan.error
    records: list[str] = []

    def finish(line: str):
        raise Finished(line)

    with pytest.raises(Finished) as final:
        harness.run(code, plan.statements, records.append, finish)
    return records, str(final.value)


def test_passing_and_failing_statements():
    records, final = run(ADD, "assert add(1, 2) == 3\nassert add(1, 1) == 3, 'wrong'\n")
    assert records == ["R", "S", "D 0 1", "D 1 0 AssertionError: wrong"]
    assert final == "E ok -"


def test_a_failing_setup_statement_ends_the_run():
    # every statement that ran is reported (the host counts only the tests among them); a test
    # that fails is one failure, a setup statement that fails leaves the rest without a meaning
    records, final = run(ADD, "x = 2\nassert add(1, 1) == x\ny = x\nassert add(y, 0) == 3\n")
    assert records == ["R", "S", "D 0 1", "D 1 1", "D 2 1", "D 3 0 AssertionError"]
    assert final == "E ok -"
    records, final = run(ADD, "assert add(1, 1) == 2\nimport no_such_module\nassert True\n")
    assert records == ["R", "S", "D 0 1"]
    assert final == "E setup 1 ModuleNotFoundError: No module named 'no_such_module'"


def test_solution_that_raises_or_does_not_compile():
    records, final = run("raise ValueError('boom\\nline')", "assert True")
    assert records == ["R"] and final == "E solution - ValueError: boom line"
    records, final = run("def f(:\n", "assert True")
    assert records == ["R"] and final.startswith("E compile - SyntaxError: ")


def test_system_exit_in_the_solution_and_in_a_test():
    _, final = run("import sys\nsys.exit(3)\n", "assert True")
    assert final == "E exit - SystemExit: 3"
    records, final = run(ADD + BOOM, "assert boom(SystemExit(0))\nassert add(1, 1) == 2\n")
    assert records == ["R", "S", "D 0 0 SystemExit: 0", "D 1 1"] and final == "E ok -"
    records, final = run(ADD, "raise SystemExit(2)\nassert True\n")  # in setup: the end
    assert records == ["R", "S"] and final == "E exit 0 SystemExit: 2"


def test_memory_errors_are_reported_as_such():
    _, final = run("raise MemoryError('big')", "assert True")
    assert final == "E memory - MemoryError: big"
    records, final = run(BOOM, "assert boom(MemoryError())\nassert True\n")
    assert records == ["R", "S", "D 0 m MemoryError", "D 1 1"] and final == "E ok -"
    _, final = run(BOOM, "boom(MemoryError())\nassert True\n")
    assert final == "E memory 0 MemoryError"


def test_builtins_patched_by_one_statement_are_restored_for_the_next():
    patch = (
        "def patch():\n"
        "    import builtins\n"
        "    builtins.len = lambda x: 99\n"
        "    builtins.AssertionError = KeyError\n"
        "    return True\n"
    )
    tests = "assert patch() and len([1]) == 99\nassert len([1]) == 1\nassert len([1]) == 99\n"
    records, final = run(patch, tests)
    assert records == ["R", "S", "D 0 1", "D 1 1", "D 2 0 AssertionError"] and final == "E ok -"


def test_the_solution_cannot_change_what_the_tests_see():
    code = (
        ADD + "import builtins, sys\n"
        "builtins.isinstance = lambda *a: True\n"
        "globals()['__builtins__'] = {'len': lambda x: 3}\n"
        "sys.settrace(lambda *a: None)\n"
        "seen = __name__\n"
    )
    tests = (
        "assert isinstance(1, str)\n"
        "assert len([1]) == 1\n"
        "assert sys.gettrace() is None\n"
        "assert (seen, __name__) == ('solution', '__main__')\n"
    )
    records, _ = run(code, tests)
    assert records == ["R", "S", "D 0 0 AssertionError", "D 1 1", "D 2 1", "D 3 1"]


def test_an_exception_that_lies_about_itself():
    code = (
        "class Odd(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no')\n"
        "raise Odd()\n"
    )
    assert run(code, "assert True")[1] == "E solution - Odd"


# --- the shipped program ---------------------------------------------------------------------------


def test_the_shipped_program_is_this_module():
    source = Path(harness.__file__).read_text(encoding="utf-8")
    assert source == isolation.HARNESS
    assert "def _harness():" in source  # tests/test_sandbox.py finds leftover runs by it
    tree = ast.parse(source)
    last = tree.body[-1]
    assert isinstance(last, ast.If) and ast.unparse(last.test) == "__name__ == '__main__'"


def test_it_imports_only_builtin_modules_and_resource():
    tree = ast.parse(isolation.HARNESS)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))
    assert imported - set(sys.builtin_module_names) == {"resource"}


def _globals_loaded(code) -> list[tuple[int, str]]:
    return [(i.offset, i.argval) for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"]


def _nested(code) -> list:
    return [c for c in code.co_consts if hasattr(c, "co_code")]


def test_nothing_is_looked_up_in_globals_once_the_sample_can_have_run():
    # a sample can `import __main__` and rebind the harness's globals (builtins included, as far
    # as a module's globals shadow them): run looks its globals up before it reports "R" (before
    # any of the sample's code runs), and its nested functions and _harness's look up none
    code = harness.run.__code__
    first_report = min(
        i.offset
        for i in dis.get_instructions(code)
        if i.opname.startswith("LOAD_FAST") and i.argval == "report"
    )
    assert all(offset < first_report for offset, _ in _globals_loaded(code))
    for nested in _nested(code) + _nested(harness._harness.__code__):
        assert _globals_loaded(nested) == [], nested.co_name
    assert [name for _, name in _globals_loaded(harness._harness.__code__)][-1] == "run"


def test_the_zygote_program_is_its_module_and_runs_only_as_pid_1():
    source = Path(zygote.__file__).read_text(encoding="utf-8")
    assert source == isolation.ZYGOTE
    last = ast.parse(source).body[-1]
    assert isinstance(last, ast.If) and ast.unparse(last.test) == "__name__ == '__main__'"
    # outside a pid namespace of its own it must not start: its kill(-1) would reach the host's
    # processes (no roots, no job: nothing here could be touched even if it did)
    argv = [sys.executable, "-I", "-S", "-c", source, isolation.HARNESS, ""]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert proc.returncode == 1 and b"not pid 1" in proc.stderr
