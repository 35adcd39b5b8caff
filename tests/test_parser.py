"""The synthesis parser: well-formed answers parse; every malformed one gets a reason."""

from __future__ import annotations

import pytest

from scoder.records import Drop
from scoder.synthesize import Parsed, parse_synthesis

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
