"""Pre-forked sandboxes vs one sandbox per program vs one per test, in the same isolation.

200 generated programs x 10 assert tests: mostly correct solutions, some wrong answers, some
crashes (at import, or for some inputs), some infinite loops (for the last tests' inputs, or at
import). Three ways, on the same worker pool and isolation level with timeout_s=1:

- pre-forked: `run_many` (its default): a zygote per worker, a forked child per program;
- per program: `run_many(prefork=False)`: a fresh sandbox per program, all its tests inside;
- per test (the baseline, the way naive harnesses run): a fresh sandbox per (solution, one test).

Their verdicts must match (per program: tests passed) or the benchmark fails. Rounds interleave
the three ways (the order rotates); the figures are medians over rounds. It also prints the wall
time of a trivial program under each isolation level, both ways, next to a bare interpreter start.

    .venv/bin/python bench/bench_sandbox.py
    .venv/bin/python bench/bench_sandbox.py --programs 50 --rounds 3 --isolation rlimits
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass

from scoder.sandbox import (
    LEVELS,
    ExecResult,
    _probe,
    _probe_prefork,
    available_isolation,
    run_many,
    run_program,
)


@dataclass(frozen=True)
class Family:
    name: str
    correct: str
    wrong: str  # a bug that shows on some inputs only
    crashes: str  # raises on some inputs only
    loops: str  # never returns for inputs marked `looping`
    reference: object
    inputs: object  # rng -> args tuple
    looping: tuple  # args that make `loops` spin


FAMILIES = [
    Family(
        "fib",
        "def solve(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
        "def solve(n):\n    a, b = 0, 1\n    for _ in range(n - (n > 12)):\n        a, b = b, a + b\n"
        "    return a\n",
        "def solve(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
        "    return a // (n % 7)\n",
        "def solve(n):\n    a, b = 0, 1\n    while n != 0:\n        a, b = b, a + b\n        n -= 1\n"
        "    return a\n",
        lambda n: _fib(n),
        lambda rng: (rng.randrange(0, 30),),
        (-1,),
    ),
    Family(
        "gcd",
        "def solve(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n",
        "def solve(a, b):\n    while b > 1:\n        a, b = b, a % b\n    return a\n",
        "def solve(a, b):\n    if a % 5 == 0:\n        raise ValueError(a)\n    while b:\n"
        "        a, b = b, a % b\n    return a\n",
        "def solve(a, b):\n    while a != b:\n        a, b = max(a, b) - min(a, b), min(a, b)\n"
        "    return a\n",
        lambda a, b: _gcd(a, b),
        lambda rng: (rng.randrange(1, 500), rng.randrange(1, 500)),
        (5, 0),
    ),
    Family(
        "vowels",
        "def solve(s):\n    return sum(c in 'aeiou' for c in s)\n",
        "def solve(s):\n    return sum(c in 'aeio' for c in s)\n",
        "def solve(s):\n    if s.startswith('x'):\n        raise KeyError(s)\n"
        "    return sum(c in 'aeiou' for c in s)\n",
        "def solve(s):\n    i = n = 0\n    while i < len(s):\n        n += s[i] in 'aeiou'\n"
        "        i += s[i] != 'q'\n    return n\n",
        lambda s: sum(c in "aeiou" for c in s),
        lambda rng: ("".join(rng.choice("abcdeioux") for _ in range(rng.randrange(1, 12))),),
        ("quiz",),
    ),
    Family(
        "kadane",
        "def solve(xs):\n    best = cur = xs[0]\n    for x in xs[1:]:\n        cur = max(x, cur + x)\n"
        "        best = max(best, cur)\n    return best\n",
        "def solve(xs):\n    best = cur = 0\n    for x in xs:\n        cur = max(x, cur + x)\n"
        "        best = max(best, cur)\n    return best\n",
        "def solve(xs):\n    best = cur = xs[0]\n    for x in xs[1:]:\n        cur = max(x, cur + x)\n"
        "        best = max(best, cur)\n    return best // (len(xs) - 3)\n",
        "def solve(xs):\n    i, best, cur = 1, xs[0], xs[0]\n    while i < len(xs):\n"
        "        cur = max(xs[i], cur + xs[i])\n        best = max(best, cur)\n"
        "        i += xs[i] != 0\n    return best\n",
        lambda xs: _kadane(xs),
        lambda rng: ([rng.randrange(-9, 10) or 1 for _ in range(rng.randrange(1, 9))],),
        ([1, 0, 2],),
    ),
]


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _kadane(xs: list[int]) -> int:
    best = cur = xs[0]
    for x in xs[1:]:
        cur = max(x, cur + x)
        best = max(best, cur)
    return best


def make_programs(n: int, tests_per_program: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(kind, code, tests), deterministic in `seed`."""
    rng = random.Random(seed)
    kinds = ["correct"] * 160 + ["wrong"] * 16 + ["crash"] * 10 + ["loop"] * 10 + ["import"] * 4
    out = []
    for i in range(n):
        family = FAMILIES[i % len(FAMILIES)]
        kind = kinds[rng.randrange(len(kinds))]
        args = [family.inputs(rng) for _ in range(tests_per_program)]
        code = {"correct": family.correct, "wrong": family.wrong, "crash": family.crashes}.get(
            kind, family.correct
        )
        if kind == "loop":
            code = family.loops
            args[-2:] = [family.looping] * 2  # the looping inputs come last
        if kind == "import":
            code = family.correct + ("while True:\n    pass\n" if i % 2 else "raise ImportError\n")
        lines = []
        for a in args:
            expected = family.reference(*a) if a != family.looping else 0
            lines.append(f"assert solve({', '.join(map(repr, a))}) == {expected!r}")
        out.append((kind, code, "\n".join(lines) + "\n"))
    return out


def batched(programs, level, workers, timeout_s, prefork) -> tuple[float, list[ExecResult]]:
    start = time.perf_counter()
    results = run_many(
        [(c, t) for _, c, t in programs],
        timeout_s=timeout_s,
        workers=workers,
        isolation=level,
        prefork=prefork,
    )
    return time.perf_counter() - start, results


def per_test(programs, level, workers, timeout_s) -> tuple[float, list[int], list[float], int]:
    """The naive way: solution + one test per sandbox (a fresh one each: prefork=False).

    Returns seconds, then per program: tests passed and sandbox-seconds; then the process count."""
    jobs, owner = [], []
    for index, (_, code, tests) in enumerate(programs):
        for line in tests.splitlines():
            jobs.append((code, line))
            owner.append(index)
    start = time.perf_counter()
    results = run_many(jobs, timeout_s=timeout_s, workers=workers, isolation=level, prefork=False)
    seconds = time.perf_counter() - start
    passed, busy = [0] * len(programs), [0.0] * len(programs)
    for index, res in zip(owner, results):
        passed[index] += res.tests_passed
        busy[index] += res.wall_s
    return seconds, passed, busy, len(jobs)


def overhead(levels, repeats: int) -> dict[str, float]:
    """Median wall time of a trivial program: in a sandbox of its own, and as the child of a warm
    zygote (one worker; the zygote's own start is not counted)."""
    python = os.path.realpath(sys.executable)
    trivial = ("x = 1", "assert x == 1")
    times: dict[str, list[float]] = {f"{level}, per program": [] for level in levels}
    times["bare python -I -S"] = []
    for _ in range(repeats):
        for level in levels:
            res = run_program(*trivial, isolation=level, prefork=False)
            times[f"{level}, per program"].append(res.wall_s)
        start = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
        times["bare python -I -S"].append(time.perf_counter() - start)
    for level in levels:
        if level != "rlimits" and not _probe_prefork(level):
            results = run_many([trivial] * repeats, workers=1, isolation=level)
            times[f"{level}, pre-forked"] = [r.wall_s for r in results]
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--tests", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--isolation", default="auto", choices=["auto", *LEVELS])
    ap.add_argument("--overhead-repeats", type=int, default=20)
    args = ap.parse_args()

    level = available_isolation() if args.isolation == "auto" else args.isolation
    programs = make_programs(args.programs, args.tests)
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} cores")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"isolation: {level}; workers: {args.workers or 'one per core'}; timeout_s={args.timeout}"
    )
    kinds = dict(Counter(k for k, _, _ in programs))
    print(f"programs: {len(programs)} x {args.tests} tests; kinds: {kinds}")
    if level == "rlimits" or _probe_prefork(level):
        print(f"(no pre-forked sandbox at {level}: the pre-forked arm runs one per program)")

    levels = [lvl for lvl in LEVELS if not _probe(lvl)]
    print(f"\nper-program wall time of a trivial program (median of {args.overhead_repeats}):")
    for name, seconds in overhead(levels, args.overhead_repeats).items():
        print(f"  {name:<22} {seconds * 1000:7.1f} ms")

    ways = ("pre-forked", "per-program", "per-test")
    rates: dict[str, list[float]] = {way: [] for way in ways}
    vs_test, vs_program, vs_test_no_timeout = [], [], []
    reference: list[int] | None = None
    for r in range(args.rounds):
        seconds: dict[str, float] = {}
        passed: dict[str, list[int]] = {}
        results: dict[str, list[ExecResult]] = {}
        for way in ways[r % 3 :] + ways[: r % 3]:  # the order rotates: no way always goes first
            if way == "per-test":
                seconds[way], passed[way], busy_p, runs = per_test(
                    programs, level, args.workers, args.timeout
                )
            else:
                seconds[way], results[way] = batched(
                    programs, level, args.workers, args.timeout, way == "pre-forked"
                )
                passed[way] = [res.tests_passed for res in results[way]]
        for way in ways[1:]:
            mismatches = [
                (i, kind, passed["pre-forked"][i], passed[way][i])
                for i, (kind, _, _) in enumerate(programs)
                if passed["pre-forked"][i] != passed[way][i]
            ]
            if mismatches:
                print(f"\nVERDICTS DIFFER in round {r + 1} (index, kind, pre-forked, {way}):")
                for row in mismatches:
                    print("  ", row)
                sys.exit(1)
        if reference is not None and reference != passed["pre-forked"]:
            print(f"\nVERDICTS CHANGED between rounds (round {r + 1})")
            sys.exit(1)
        reference = passed["pre-forked"]
        for way in ways:
            rates[way].append(len(programs) / seconds[way])
        vs_test.append(seconds["per-test"] / seconds["pre-forked"])
        vs_program.append(seconds["per-program"] / seconds["pre-forked"])
        statuses = Counter(res.status for res in results["pre-forked"])
        print(
            f"round {r + 1}: "
            + " | ".join(
                f"{way} {seconds[way]:6.1f}s ({rates[way][-1]:6.1f} prog/s)" for way in ways
            )
            + f" | pre-forked vs per-test {vs_test[-1]:.1f}x, vs per-program {vs_program[-1]:.1f}x"
            + f" | {runs} per-test sandboxes | statuses {dict(statuses)}"
        )
        # where the time goes: sandbox-seconds (summed over workers), timeouts apart
        pre = results["pre-forked"]
        slow = {i for i, res in enumerate(pre) if res.status == "timeout"}
        fast = [i for i in range(len(programs)) if i not in slow]
        b_slow = sum(pre[i].wall_s for i in slow)
        b_fast = sum(pre[i].wall_s for i in fast)
        p_slow = sum(busy_p[i] for i in slow)
        p_fast = sum(busy_p[i] for i in fast)
        vs_test_no_timeout.append(p_fast / b_fast)
        print(
            f"         sandbox-seconds, pre-forked vs per-test: {len(slow)} programs that time out:"
            f" {b_slow:5.1f} vs {p_slow:5.1f} | the {len(fast)} others: {b_fast:5.2f} vs"
            f" {p_fast:5.1f} ({vs_test_no_timeout[-1]:.1f}x)"
        )

    total = sum(reference or [])
    print(
        f"\nverdicts identical in every round: {total} of {len(programs) * args.tests} tests pass"
    )
    for way in ways:
        print(f"{way:<12} {statistics.median(rates[way]):7.1f} programs/s (median)")
    print(
        f"pre-forked vs per-test:    {statistics.median(vs_test):.1f}x (median of per-round ratios;"
        " target >= 10x)"
    )
    print(f"pre-forked vs per-program: {statistics.median(vs_program):.1f}x (median)")
    print(
        f"pre-forked vs per-test on the programs that do not time out: "
        f"{statistics.median(vs_test_no_timeout):.1f}x (sandbox-seconds, median over rounds)"
    )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
