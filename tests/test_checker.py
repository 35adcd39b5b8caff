"""The in-sandbox checker (`scoder.eval.checker`), in process: what counts as plain data, the
comparisons and EvalPlus's special oracles, the failure messages, and the outputs `emit` ships
back, read by the host's parser. tests/test_eval.py runs the same code in the sandbox."""

from __future__ import annotations

import builtins
import collections
import marshal
import math
import re
import sys

import pytest

from scoder.eval import checker, mbppplus, sandboxed
from scoder.sandbox import ExecResult


class Yes:
    """Equal to anything: what a sample returns to pass `assert f(x) == y` without solving it."""

    def __eq__(self, other):
        return True

    __hash__ = None


class Int(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


def blobs(inputs: list[list]) -> list[bytes]:
    return [marshal.dumps(list(a)) for a in inputs]


# --- plain data ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2.5,
        1j,
        "s",
        b"b",
        [1, (2, "x"), {3}, frozenset({4})],
        {"k": [1, 2], 3: (None,)},
        collections.Counter("aab"),
        collections.OrderedDict(a=1),
        collections.deque([1, 2]),
    ],
)
def test_plain_data(value):
    assert checker.plain(value)


@pytest.mark.parametrize(
    "value",
    [object(), Yes(), Int(1), [1, Yes()], {Int(1): 1}, {"k": (1, object())}, re.compile("")],
)
def test_not_plain_data(value):
    assert not checker.plain(value)


def test_guard_rejects_an_object_equal_to_anything():
    assert checker.guard(lambda x: [x, x])(2) == [2, 2]
    with pytest.raises(AssertionError, match="returned a Yes, not plain data"):
        checker.guard(lambda: Yes())()
    with pytest.raises(AssertionError, match="returned a Int, not plain data"):
        checker.guard(lambda: Int(0))()


# --- comparing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out", "exp", "atol", "want"),
    [
        (40, 40, 0, True),
        (40.0, 40, 0, True),  # == first: 40.0 == 40
        ("40", 40, 0, False),
        (1.0 + 5e-7, 1.0, 0, True),  # a float expected: atol 1e-6 when the task has none
        (1.0 + 5e-6, 1.0, 0, False),
        (0.50005, 0.5, 1e-4, True),  # the task's atol
        (0.502, 0.5, 1e-4, False),
        (1, 1.0000001, 0, False),  # within tolerance, but not the same type
        ([1.0, 2.0000001], [1.0, 2.0], 0, True),
        ((1.0, 2.0000001), [1.0, 2.0], 0, False),
        ([1.0], [1.0, 2.0], 0, False),
        (math.nan, math.nan, 0, False),  # as numpy.allclose: nan is never close
        (10, 10 + 1e-9, 0, False),  # an int expected (no tolerance) and not equal
        (Yes(), 1, 0, False),
    ],
)
def test_same_with_floats_and_atol(out, exp, atol, want):
    assert checker.same(out, exp, atol, "equal", b"") is want


def test_special_oracles():
    same = checker.same
    # set_eq: any order and multiplicity of the same elements
    assert same([3, 1, 1], {1, 3}, 0, "set_eq", b"")
    assert not same([1, 2], {1, 3}, 0, "set_eq", b"")
    # not_none: the canonical output was reduced to "not None"; a bool output is compared as is
    assert same(re.match("a", "a"), True, 0, "not_none", b"")
    assert not same(None, True, 0, "not_none", b"")
    assert same(None, False, 0, "not_none", b"")
    assert same(False, False, 0, "not_none", b"") and not same(True, False, 0, "not_none", b"")
    # any: every plain answer is right (and nothing else)
    assert same("whatever", [1], 0, "any", b"") and not same(Yes(), [1], 0, "any", b"")
    # or_zero: 0 is right too
    assert same(0, 5, 0, "or_zero", b"") and same(5, 5, 0, "or_zero", b"")
    assert not same(4, 5, 0, "or_zero", b"")
    # surface_area: the other reading of "height", within the task's atol
    args = marshal.dumps([3, 4])
    other = checker.surface_area(3, 4)
    assert other == 35  # 3**2 + 4 * (3 * sqrt(1.5**2 + 4**2)) / 2, rounded
    assert same(other, 999, 0.01, "surface_area", args)
    assert not same(other + 1, 999, 0.01, "surface_area", args)
    # digit_distance: numbers of different lengths, padded with zeros
    args = marshal.dumps([123, 45])
    assert checker.digit_distance(123, 45) == 1 + 2 + 2
    assert same(5, 7, 0, "digit_distance", args) and not same(6, 7, 0, "digit_distance", args)


def test_check_passes_and_says_why_it_fails():
    inputs = blobs([[1], [2], [3]])
    square = lambda x: x * x  # noqa: E731
    assert checker.check(square, inputs, marshal.dumps([1, 4, 9]), 0, "equal") is True
    assert checker.check(square, inputs, lambda: [1, 4, 9], 0, "equal") is True  # in-process oracle
    with pytest.raises(AssertionError) as got:
        checker.check(square, inputs, marshal.dumps([1, 5, 9]), 0, "equal")
    assert str(got.value) == "input 1: got 4, expected 5"
    with pytest.raises(AssertionError) as got:
        checker.check(lambda x: Yes(), inputs, marshal.dumps([1, 4, 9]), 0, "equal")
    assert str(got.value) == "input 0: got a Yes, expected 1"
    with pytest.raises(AssertionError) as got:  # the comparison itself raised
        checker.check(lambda a, b: "x", blobs([[3, 4]]), marshal.dumps([1]), 0.1, "surface_area")
    assert str(got.value) == "input 0: got 'x', expected 1 (TypeError)"


def test_check_calls_with_fresh_arguments():
    def pops(xs):
        return xs.pop()

    inputs = blobs([[[1, 2]]])
    assert checker.check(pops, inputs * 3, marshal.dumps([2, 2, 2]), 0, "equal")


# --- emitting the expected outputs -----------------------------------------------------------------


def emitted(capfd, fn, inputs, oracle="equal", size=3000) -> dict:
    """emit's chunks, read back as the host reads them from a sandboxed run's stderr."""
    marks = {}
    chunk, count = 0, 1
    while chunk < count:
        assert checker.emit(fn, blobs(inputs), oracle, chunk, size) is True
        stderr = capfd.readouterr().err
        result = ExecResult("passed", 1, 1, 0.0, "rlimits", stderr)
        mark = mbppplus._mark(result)
        assert not isinstance(mark, str), mark
        assert mark[0] == chunk
        marks[chunk], count = mark, mark[1]
        chunk += 1
    return mbppplus._assemble(marks)


def test_emit_writes_outputs_the_host_reads_back(capfd, monkeypatch):
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # emit points sys.stderr at stdout
    values = [
        None,
        [1, 2.5, "s"],
        (1, (2, 3)),
        {3, 1, 2},
        frozenset({"a"}),
        {"k": (1,), 2: [None]},
        1 + 2j,
        b"\x00\xff",
        True,
    ]
    got = emitted(capfd, lambda i: values[i], [[i] for i in range(len(values))])
    assert got["error"] is None and got["seconds"] >= 0
    assert mbppplus.decode_tagged(got["outputs"]) == values
    assert [type(v) for v in mbppplus.decode_tagged(got["outputs"])] == [type(v) for v in values]


def test_emit_in_several_chunks_and_with_oracles(capfd, monkeypatch):
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    inputs = [[i] for i in range(200)]
    got = emitted(capfd, lambda i: list(range(i)), inputs, size=100)
    assert mbppplus.decode_tagged(got["outputs"]) == [list(range(i)) for i in range(200)]
    got = emitted(capfd, lambda i: [i, i, 0], inputs[:3], oracle="set_eq")
    assert mbppplus.decode_tagged(got["outputs"]) == [{0}, {0, 1}, {0, 2}]
    got = emitted(capfd, lambda i: None if i else "m", inputs[:2], oracle="not_none")
    assert got["outputs"] == [True, False]


def test_emit_reports_what_the_canonical_solution_cannot_give(capfd, monkeypatch):
    monkeypatch.setattr(sys, "stderr", sys.stderr)

    def fails_on_one(i):
        if i == 1:
            raise ValueError("no")
        return i

    got = emitted(capfd, fails_on_one, [[0], [1], [2]])
    assert got["error"] == "canonical solution failed on input 1: ValueError: no"
    assert "outputs" not in got
    got = emitted(capfd, lambda i: object(), [[0]])
    assert got["error"].startswith(
        "canonical solution failed on input 0: TypeError: cannot compare"
    )


# --- shipped into the sandbox ----------------------------------------------------------------------


def test_shipped_checker_builds_only_what_the_entry_point_needs():
    guard = eval(sandboxed.GUARD, {"__builtins__": builtins})
    with pytest.raises(AssertionError, match="not plain data"):
        guard(lambda: Yes())()
    names = {}
    for entry in ("guard", "check", "emit"):
        ns = {"__builtins__": builtins}
        exec(marshal.loads(sandboxed._checker_code(entry)), ns)
        names[entry] = set(ns)
        assert ns[entry].__doc__ is None  # docstrings are not shipped
    assert "check" not in names["guard"] and "same" not in names["guard"]
    assert "check" in names["check"] and "enc" not in names["check"]
    assert "emit" in names["emit"]
    check = eval(sandboxed.CHECK, {"__builtins__": builtins})
    assert check(abs, blobs([[-2]]), marshal.dumps([2]), 0, "equal")


def test_shipped_checker_keeps_the_builtins_it_was_built_with(monkeypatch):
    ns = {"__builtins__": builtins}
    exec(marshal.loads(sandboxed._checker_code("guard")), ns)
    monkeypatch.setattr(builtins, "all", lambda _: True)
    monkeypatch.setattr(builtins, "type", lambda _: int)
    judged = ns["plain"]([object()])
    monkeypatch.undo()
    assert judged is False
