"""The pure-function seed filter: what it keeps, what it drops and why, on real code."""

from __future__ import annotations

import json

import pytest

from scoder.config import SeedsConfig
from scoder.purity import impurity
from scoder.seeds import mine_seeds

PURE = {
    "arithmetic": "def mean(values):\n    return sum(values) / len(values)\n",
    "local helper and comprehension": (
        "def squares_of_odds(numbers, limit=None):\n"
        "    def odd(n):\n"
        "        return n % 2 == 1\n"
        "    picked = [n * n for n in numbers if odd(n)]\n"
        "    return picked[:limit] if limit else picked\n"
    ),
    "pure import inside": (
        "def gcd_all(*numbers):\n    import math\n    from functools import reduce\n"
        "    return reduce(math.gcd, numbers)\n"
    ),
    "exceptions, loops, walrus, match": (
        "def parse(text):\n"
        "    try:\n"
        "        n = int(text)\n"
        "    except ValueError as exc:\n"
        "        raise ValueError(f'bad {text}') from exc\n"
        "    while (n := n - 1) > 10:\n"
        "        pass\n"
        "    match [n]:\n"
        "        case [x]:\n"
        "            return x\n"
        "    return n\n"
    ),
    "a pure module imported at the top of its file": (
        "def hypot(a, b):\n    return math.sqrt(a * a + b * b)\n"
    ),
    "in-place algorithm on its argument": (
        "def bubble(items):\n"
        "    for i in range(len(items)):\n"
        "        for j in range(len(items) - 1 - i):\n"
        "            if items[j] > items[j + 1]:\n"
        "                items[j], items[j + 1] = items[j + 1], items[j]\n"
        "    return items\n"
    ),
}

IMPURE = {
    "reads a file": (
        "def head(path):\n    with open(path) as f:\n        return f.read()\n",
        "`with`",
    ),
    "prints": ("def shout(x):\n    print(x)\n    return x\n", "`print` (a builtin with effects)"),
    "module constant": (
        "def scale(x):\n    return x * FACTOR\n",
        "`FACTOR` (outside the function)",
    ),
    "module helper": ("def f(x):\n    return _helper(x) + 1\n", "`_helper` (outside"),
    "imports os": ("def cwd(x):\n    import os\n    return os.getcwd() + x\n", "imports os"),
    "relative import": ("def g(x):\n    from .math import y\n    return y(x)\n", "imports math"),
    "a class": ("class A:\n    def f(self):\n        return 1\n", "not a single function"),
    "two functions": ("def a(x):\n    return x\n\n\ndef b(x):\n    return x\n", "not a single"),
    "no parameters": ("def answer():\n    return 42\n", "takes no parameters"),
    "a method lifted out": ("def area(self):\n    return self.w * self.h\n", "a method"),
    "decorated": ("@cache\ndef f(x):\n    return x\n", "decorated"),
    "async": ("async def f(x):\n    return x\n", "not a single function"),
    "generator": ("def count(n):\n    yield n\n    return n\n", "`yield`"),
    "global state": ("def bump(x):\n    global N\n    N = x\n    return N\n", "`global`"),
    "mutates an object": ("def rename(obj, name):\n    obj.name = name\n    return obj\n", "sets"),
    "reflection": ("def name_of(f):\n    return f.__name__\n", "reflects on objects"),
    "eval": ("def calc(expr):\n    return eval(expr)\n", "`eval` (a builtin with effects)"),
    "no return value": ("def noop(x):\n    x = x + 1\n", "returns no value"),
    "trivial": ('def cast(typ, val):\n    """Cast."""\n    return val\n', "trivial"),
    "broken": ("def f(:\n", "does not parse"),
}


@pytest.mark.parametrize("code", PURE.values(), ids=PURE.keys())
def test_pure_functions_are_kept(code):
    assert impurity(code) is None


@pytest.mark.parametrize(("code", "why"), IMPURE.values(), ids=IMPURE.keys())
def test_impure_code_is_dropped_with_the_reason(code, why):
    reason = impurity(code)
    assert reason is not None and why in reason, reason


def test_seed_filter_on_a_directory_records_every_drop(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "mixed.py").write_text(
        "import os\n\nLIMIT = 3\n\n\n"
        + "\n\n".join(
            [
                "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    return min(x, hi)",
                "def limited(x):\n    if x > LIMIT:\n        return LIMIT\n    return x",
                "def listing(path):\n    names = os.listdir(path)\n    names.sort()\n    return names",
            ]
        )
        + "\n"
    )
    cfg = SeedsConfig(source=str(root), pure_functions=True, min_lines=2)
    kept, dropped = mine_seeds(cfg)
    assert [s.source.name for s in kept] == ["clamp"]
    reasons = {s.source.name: (s.drop.reason, s.drop.detail) for s in dropped}
    assert reasons == {
        "limited": ("not_pure", "uses `LIMIT` (outside the function)"),
        "listing": ("not_pure", "uses `os` (outside the function)"),
    }
    # Without the filter all three are seeds.
    assert len(mine_seeds(cfg.model_copy(update={"pure_functions": False})).kept) == 3


def test_stdlib_pure_seeds_are_functions_that_run_alone():
    """Each pure seed from this Python's standard library, lifted out of its module, defines
    itself without the module around it (nothing of its module is needed to call it)."""
    cfg = SeedsConfig(pure_functions=True, min_lines=4, max_lines=20, max_chars=800, max_seeds=30)
    kept, _ = mine_seeds(cfg)
    assert len(kept) == 30
    for seed in kept:
        namespace: dict = {}
        exec(compile(seed.text, seed.source.location, "exec"), namespace)  # defines only
        assert callable(namespace[seed.source.name]), json.dumps(seed.source.model_dump())
