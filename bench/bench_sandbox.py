"""One process per program (all its tests inside) vs one process per test, in the same sandbox.

200 generated programs x 10 assert tests: mostly correct solutions, some wrong answers, some
crashes (at import, or for some inputs), some infinite loops (for the last tests' inputs, or at
import). Both ways run on the same worker pool and isolation level with timeout_s=1; their verdicts
must match (per program: tests_passed, and whether everything passed) or the benchmark fails.
Rounds interleave the two ways; the figures are medians over rounds. It also prints the wall time
of a trivial program under each isolation level next to a bare interpreter start.

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

from scoder.sandbox import LEVELS, ExecResult, _probe, available_isolation, run_many, run_program


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


def batched(programs, level, workers, timeout_s) -> tuple[float, list[ExecResult]]:
    start = time.perf_counter()
    results = run_many(
        [(c, t) for _, c, t in programs], timeout_s=timeout_s, workers=workers, isolation=level
    )
    return time.perf_counter() - start, results


def per_test(programs, level, workers, timeout_s) -> tuple[float, list[int], list[float], int]:
    """The naive way: solution + one test per process.

    Returns seconds, then per program: tests passed and sandbox-seconds; then the process count."""
    jobs, owner = [], []
    for index, (_, code, tests) in enumerate(programs):
        for line in tests.splitlines():
            jobs.append((code, line))
            owner.append(index)
    start = time.perf_counter()
    results = run_many(jobs, timeout_s=timeout_s, workers=workers, isolation=level)
    seconds = time.perf_counter() - start
    passed, busy = [0] * len(programs), [0.0] * len(programs)
    for index, res in zip(owner, results):
        passed[index] += res.tests_passed
        busy[index] += res.wall_s
    return seconds, passed, busy, len(jobs)


def overhead(levels, repeats: int) -> dict[str, float]:
    python = os.path.realpath(sys.executable)
    times: dict[str, list[float]] = {level: [] for level in levels}
    times["bare python -I -S"] = []
    for _ in range(repeats):
        for level in levels:
            times[level].append(run_program("x = 1", "assert x == 1", isolation=level).wall_s)
        start = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
        times["bare python -I -S"].append(time.perf_counter() - start)
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
    print(
        f"programs: {len(programs)} x {args.tests} tests; kinds: {dict(Counter(k for k, _, _ in programs))}"
    )

    levels = [lvl for lvl in LEVELS if not _probe(lvl)]
    print(f"\nper-program wall time of a trivial program (median of {args.overhead_repeats}):")
    for name, seconds in overhead(levels, args.overhead_repeats).items():
        print(f"  {name:<18} {seconds * 1000:7.1f} ms")

    rates_b, rates_p, ratios, ratios_no_timeout = [], [], [], []
    reference: list[int] | None = None
    for r in range(args.rounds):
        order = ("batched", "per-test") if r % 2 == 0 else ("per-test", "batched")
        for way in order:
            if way == "batched":
                sec_b, results = batched(programs, level, args.workers, args.timeout)
                passed_b = [res.tests_passed for res in results]
            else:
                sec_p, passed_p, busy_p, runs = per_test(
                    programs, level, args.workers, args.timeout
                )
        mismatches = [
            (i, kind, passed_b[i], passed_p[i])
            for i, (kind, _, _) in enumerate(programs)
            if passed_b[i] != passed_p[i]
        ]
        if mismatches:
            print(f"\nVERDICTS DIFFER in round {r + 1} (index, kind, batched, per-test):")
            for row in mismatches:
                print("  ", row)
            sys.exit(1)
        if reference is not None and reference != passed_b:
            print(f"\nVERDICTS CHANGED between rounds (round {r + 1})")
            sys.exit(1)
        reference = passed_b
        rates_b.append(len(programs) / sec_b)
        rates_p.append(len(programs) / sec_p)
        ratios.append(sec_p / sec_b)
        statuses = Counter(res.status for res in results)
        print(
            f"round {r + 1}: one process per program {sec_b:6.1f}s ({rates_b[-1]:6.1f} prog/s) | "
            f"one per test {sec_p:6.1f}s ({rates_p[-1]:6.1f} prog/s, {runs} processes) | "
            f"ratio {ratios[-1]:.1f}x | statuses {dict(statuses)}"
        )
        # where the time goes: sandbox-seconds (summed over workers), timeouts apart
        slow = [i for i, res in enumerate(results) if res.status == "timeout"]
        fast = [i for i in range(len(programs)) if i not in set(slow)]
        b_slow, b_fast = (sum(results[i].wall_s for i in group) for group in (slow, fast))
        p_slow, p_fast = (sum(busy_p[i] for i in group) for group in (slow, fast))
        ratios_no_timeout.append(p_fast / b_fast)
        print(
            f"         sandbox-seconds: {len(slow)} programs that time out: {b_slow:5.1f} vs "
            f"{p_slow:5.1f} | the {len(fast)} others: {b_fast:5.1f} vs {p_fast:5.1f} "
            f"({ratios_no_timeout[-1]:.1f}x)"
        )

    total = sum(reference or [])
    print(
        f"\nverdicts identical in every round: {total} of {len(programs) * args.tests} tests pass"
    )
    print(f"one process per program: {statistics.median(rates_b):7.1f} programs/s (median)")
    print(f"one process per test:    {statistics.median(rates_p):7.1f} programs/s (median)")
    print(f"speed-up: {statistics.median(ratios):.1f}x (median of per-round ratios)")
    print(
        f"speed-up on the programs that do not time out: "
        f"{statistics.median(ratios_no_timeout):.1f}x (sandbox-seconds, median over rounds)"
    )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
