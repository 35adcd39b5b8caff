"""The synthesis parser: well-formed answers parse; every malformed one gets a reason."""

from __future__ import annotations

import pytest

from scoder.parsing import Parsed, parse_judgement, parse_synthesis
from scoder.records import Drop

GOOD = """### Problem
Write a function `add(a, b)` that returns the sum of two numbers.

### Solution
```python
def add(a, b):
    return a + b
```

### Tests
```python
assert add(1, 2) == 3
assert add(-1, 1) == 0
```
"""


def test_well_formed_answer():
    parsed = parse_synthesis(GOOD)
    assert isinstance(parsed, Parsed)
    assert parsed.problem == "Write a function `add(a, b)` that returns the sum of two numbers."
    assert parsed.solution == "def add(a, b):\n    return a + b"
    assert parsed.tests == "assert add(1, 2) == 3\nassert add(-1, 1) == 0"


@pytest.mark.parametrize(
    "text",
    [
        # bold / colon headers, chatter around, an explanation after the tests
        "Sure! Here you go.\n\n**Problem:**\nAdd two numbers.\n\n**Solution:**\n```python\ndef add(a, b):\n    return a + b\n```\n"
        "**Tests:**\n```python\nassert add(1, 2) == 3\n```\n### Explanation\nIt adds.",
        # no code fences at all
        "### Problem\nAdd two numbers.\n### Solution\ndef add(a, b):\n    return a + b\n### Tests\nassert add(1, 2) == 3\n",
        # plain fence without language, "Unit tests" header, "Problem statement"
        "## Problem statement\nAdd.\n## Solution\n```\ndef add(a, b):\n    return a + b\n```\n## Unit tests\n```py\nassert add(1, 2) == 3\n```",
        # a '### Tests' line inside the solution's code block is code, not a header
        "### Problem\nAdd.\n### Solution\n```python\n# ### Tests\ndef add(a, b):\n    return a + b\n```\n### Tests\n```python\nassert add(1, 2) == 3\n```",
        # headers with their text on the same line; "Test Cases"
        "**Problem:** Add two numbers.\n\n**Solution:**\n```python\ndef add(a, b):\n    return a + b\n```\n"
        "### Test Cases\n```python\nassert add(1, 2) == 3\n```",
        "Problem: Add two numbers.\nCode:\n```python\ndef add(a, b):\n    return a + b\n```\n"
        "Tests:\n```python\nassert add(1, 2) == 3\n```",
        # no headers at all: prose, then the solution's block, then the tests' block
        "Sure! Here is an exercise.\n\nWrite a function `add(a, b)` that adds two numbers.\n\n"
        "```python\ndef add(a, b):\n    return a + b\n```\n\n```python\nassert add(1, 2) == 3\n```\n",
        # the solution and its asserts in one block
        "### Problem\nAdd two numbers.\n\n### Solution\n```python\ndef add(a, b):\n    return a + b\n\n"
        "assert add(1, 2) == 3\n```\n",
        # tests under a problem section that also holds the code
        "## Task\nWrite add(a, b).\n### Solution:\n```python\ndef add(a, b):\n    return a + b\n```\n"
        "### Unit Tests:\n```python\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n```\nThat's it!",
    ],
)
def test_tolerated_variations(text):
    parsed = parse_synthesis(text)
    assert isinstance(parsed, Parsed), parsed
    assert "def add" in parsed.solution
    assert parsed.tests.startswith("assert add(1, 2) == 3")


MALFORMED = [
    ("", "stop", "empty_output"),
    ("   \n\n", "stop", "empty_output"),
    ("def add(a, b):\n    return a + b\n", "stop", "missing_problem"),
    (
        "### Problem\n\n### Solution\n```python\nx = 1\n```\n### Tests\n```python\nassert x\n```",
        "stop",
        "empty_problem",
    ),
    ("### Problem\nAdd two numbers.\n", "stop", "missing_solution"),
    (
        "### Problem\nAdd.\n### Solution\n```python\ndef add(a, b):\n    return a + b\n```\n",
        "stop",
        "missing_tests",
    ),
    (
        "### Problem\nAdd.\n### Solution\n```python\ndef add(a, b)\n    return a + b\n```\n### Tests\n```python\nassert add(1, 2) == 3\n```",
        "stop",
        "solution_syntax_error",
    ),
    (
        "### Problem\nAdd.\n### Solution\n```python\ndef add(a, b):\n    return a + b\n```\n### Tests\n```python\nassert add(1, 2 == 3\n```",
        "stop",
        "tests_syntax_error",
    ),
    (
        "### Problem\nAdd.\n### Solution\n```python\ndef add(a, b):\n    return a + b\n```\n### Tests\n```python\nprint(add(1, 2))\n```",
        "stop",
        "tests_without_assert",
    ),
    (
        "### Problem\nAdd.\n### Solution\n```python\n```\n### Tests\n```python\nassert 1\n```",
        "stop",
        "empty_solution",
    ),
    (
        "### Problem\nAdd.\n### Solution\n```python\ndef add(a, b):\n    return a + b\n```\n### Tests\n```python\nassert add(1, 2) == 3\n",
        "stop",
        "unclosed_tests_fence",
    ),
    (
        "### Problem\nAdd.\n### Solution\nThe answer is to add them up, obviously.\n### Tests\n```python\nassert 1\n```",
        "stop",
        "solution_syntax_error",
    ),
    # cut off by max_new_tokens: reported as truncated, with the underlying failure in the detail
    (
        "### Problem\nAdd.\n### Solution\n```python\ndef add(a, b):\n    return a +",
        "length",
        "truncated",
    ),
    ("### Problem\nAdd two numbers and then", "length", "truncated"),
]


@pytest.mark.parametrize(("text", "finish", "reason"), MALFORMED)
def test_malformed_outputs_get_a_reason(text, finish, reason):
    result = parse_synthesis(text, finish)
    assert isinstance(result, Drop)
    assert result.stage == "synthesize"
    assert result.reason == reason


# An answer whose tests are written for a test runner rather than as bare asserts.
ADD_WITH_TESTS = """### Problem
Add two numbers.

### Solution
```python
def add(a, b):
    return a + b
```

### Tests
```python
"""

PYTEST_STYLE = (
    ADD_WITH_TESTS
    + """import pytest


def test_small():
    assert add(1, 2) == 3


def test_negative():
    assert add(-1, -1) == -2


def test_wrong():
    assert add(2, 2) == 5
```
"""
)

UNITTEST_STYLE = (
    ADD_WITH_TESTS
    + """import unittest


class TestAdd(unittest.TestCase):
    def setUp(self):
        self.base = 1

    def test_small(self):
        self.assertEqual(add(self.base, 2), 3)

    def test_wrong(self):
        self.assertEqual(add(2, 2), 5)

    def helper(self):
        return 0


if __name__ == "__main__":
    unittest.main()
```
"""
)


@pytest.mark.parametrize(
    ("text", "expected_calls", "passed"),
    [
        (PYTEST_STYLE, ["test_small()", "test_negative()", "test_wrong()"], 2),
        (UNITTEST_STYLE, ["TestAdd('test_small').debug()", "TestAdd('test_wrong').debug()"], 1),
    ],
)
def test_pytest_and_unittest_tests_become_statements_the_harness_runs(text, expected_calls, passed):
    """Uncalled test functions and TestCase methods get their calls; the runner under the main
    guard and an unused `import pytest` go: each test is then one counted statement."""
    from scoder.sandbox import LEVELS, _probe, run_program

    parsed = parse_synthesis(text)
    assert isinstance(parsed, Parsed), parsed
    assert parsed.tests.splitlines()[-len(expected_calls) :] == expected_calls
    assert "unittest.main" not in parsed.tests and "import pytest" not in parsed.tests
    if not any(not _probe(level) for level in LEVELS):
        pytest.skip("no sandbox here")
    result = run_program(parsed.solution, parsed.tests, timeout_s=10)
    assert result.tests_total == len(expected_calls) and result.tests_passed == passed
    assert result.status == "failed"


def test_truncation_detail_keeps_the_cause():
    result = parse_synthesis("### Problem\nAdd.\n### Solution\n```python\ndef f(", "length")
    assert isinstance(result, Drop) and "unclosed_solution_fence" in result.detail


def test_complete_answer_that_hit_the_limit_is_kept():
    assert isinstance(parse_synthesis(GOOD, "length"), Parsed)


@pytest.mark.parametrize(
    "junk", ["\x00\x01\x02", "```", "### Problem\n```python\n" * 50, "\ud800 broken surrogate"]
)
def test_hostile_text_never_raises(junk):
    assert isinstance(parse_synthesis(junk), (Drop, Parsed))


# --- the judge's answers ---------------------------------------------------------------------------

ASPECTS = ["consistency", "correctness", "clarity"]


@pytest.mark.parametrize(
    "text",
    [
        '{"consistency": 8, "correctness": 7, "clarity": 6}',
        '{"consistency": 8.0, "correctness": "7", "clarity": "6/10"}',
        'Here are my scores:\n```json\n{"Consistency": 8, "correctness": 7, "Clarity": 6}\n```\nDone.',
        '{"consistency": {"score": 8, "why": "ok"}, "correctness": 7, "clarity": 6} because...',
        "consistency: 8\ncorrectness: 7\nclarity - 6\n",
        '{"note": "x"} then {"consistency": 8, "correctness": 7, "clarity": 6}',
    ],
)
def test_judge_answers_real_models_write_are_read(text):
    scores, reason = parse_judgement(text, ASPECTS)
    assert reason is None and scores == {"consistency": 8, "correctness": 7, "clarity": 6}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I think it is good.", "malformed_json"),
        ('{"consistency": 8, "correctness": ', "malformed_json"),
        ("[1, 2, 3]", "malformed_json"),
        ('{"consistency": 8, "correctness": 7}', "missing_aspects"),
        ('{"consistency": 8, "correctness": 7, "clarity": 12}', "out_of_range"),
        ('{"consistency": "high", "correctness": 7, "clarity": 6}', "non_integer"),
        ('{"consistency": true, "correctness": 7, "clarity": 6}', "non_integer"),
    ],
)
def test_unusable_judge_answers_say_why(text, reason):
    scores, why = parse_judgement(text, ASPECTS)
    assert scores is None and why.split(":")[0] == reason


# --- no input crashes the parsers ------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PIECES = st.sampled_from(
    [
        "### Problem\n", "**Solution:**\n", "Tests:\n", "### Test Cases\n", "```python\n", "```\n",
        "~~~\n", "def f(x):\n    return x\n", "assert f(1) == 1\n", "class T(unittest.TestCase):\n",
        "    def test_a(self):\n        self.assertEqual(f(1), 1)\n", "if __name__ == '__main__':\n",
        "    unittest.main()\n", '{"consistency": 8', ", ", "}", "\n", "Problem: write f.\n",
        "import pytest\n", "def test_x():\n    assert f(2) == 2\n", "(((", "\x00", "\ud800",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(PIECES, st.text(max_size=40)), max_size=30),
    st.sampled_from(["stop", "length"]),
)
def test_no_input_crashes_the_synthesis_parser(pieces, finish):
    result = parse_synthesis("".join(pieces), finish)
    assert isinstance(result, (Parsed, Drop))
    if isinstance(result, Drop):
        assert result.stage == "synthesize" and result.reason


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(PIECES, st.text(max_size=40)), max_size=30))
def test_no_input_crashes_the_judge_parser(pieces):
    scores, reason = parse_judgement("".join(pieces), ASPECTS)
    assert (scores is None) != (reason is None)
