"""Sandbox execution on a Ray cluster vs the local pool: the 200-program corpus of
bench/bench_sandbox.py (10 tests each, some wrong, crashing or looping), timeout_s=1.

The local pool is `run_many` in this process (one thread per core, each waiting on one sandboxed
process); Ray is the same call with `executor.kind: ray` active: shards of programs as Ray tasks,
one CPU and one sandbox at a time each, on a local cluster of `--workers` CPUs started once
(its start-up is reported apart and not in the rounds). Verdicts must be equal or the benchmark
fails. Rounds interleave the two; medians over rounds.

    .venv/bin/python bench/bench_ray_sandbox.py
    .venv/bin/python bench/bench_ray_sandbox.py --programs 50 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time

from bench_sandbox import make_programs

from scoder import executors
from scoder.config_scale import ExecutorConfig
from scoder.sandbox import available_isolation, run_many


def verdicts(results):
    return [(r.status, r.tests_passed, r.tests_total) for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--timeout-s", type=float, default=1.0)
    args = parser.parse_args()
    corpus = [(c, t) for _, c, t in make_programs(args.programs, 10)]
    level = available_isolation()
    settings = dict(timeout_s=args.timeout_s, workers=args.workers, isolation=level)

    start = time.perf_counter()
    ray_config = ExecutorConfig(kind="ray", num_cpus=args.workers)
    with executors.activate(ray_config):
        started = time.perf_counter() - start
        local_s, ray_s = [], []
        for i in range(args.rounds):
            order = ("local", "ray") if i % 2 == 0 else ("ray", "local")
            for way in order:
                with executors.here() if way == "local" else contextlib.nullcontext():
                    t0 = time.perf_counter()
                    results = run_many(corpus, **settings)
                    took = time.perf_counter() - t0
                (local_s if way == "local" else ray_s).append(took)
                if way == "local":
                    local = verdicts(results)
                else:
                    remote = verdicts(results)
            assert local == remote, "Ray and the local pool disagree"
            print(f"round {i + 1}: local {local_s[-1]:.2f} s, ray {ray_s[-1]:.2f} s")
    lm, rm = statistics.median(local_s), statistics.median(ray_s)
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, isolation {level}; "
        f"Ray local cluster of {args.workers} CPUs started in {started:.1f} s"
    )
    print(
        "| way | "
        + " | ".join(f"round {i + 1}" for i in range(args.rounds))
        + " | median | programs/s |"
    )
    print("|---" * (args.rounds + 3) + "|")
    for name, times, med in (("local pool", local_s, lm), ("Ray", ray_s, rm)):
        cells = " | ".join(f"{t:.2f} s" for t in times)
        print(f"| {name} | {cells} | {med:.2f} s | {len(corpus) / med:.1f} |")
    print(f"\nRay / local wall time: {rm / lm:.2f}x (verdicts equal in every round)")


if __name__ == "__main__":
    main()
