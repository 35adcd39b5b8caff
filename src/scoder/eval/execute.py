"""Executing every sample of a benchmark in the sandbox, and the verdict of each.

Each sample runs in a process of its own (`scoder.sandbox.run_many`), with the time limit its
task allows: a multiple of the canonical solution's time for MBPP+ (never less than the sandbox's
`timeout_s`), rounded so that samples with the same limit share a batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from scoder.config import SandboxConfig
from scoder.eval.benchmarks import BenchmarkTask
from scoder.eval.mbppplus import Expected, expected_outputs
from scoder.eval.programs import program
from scoder.eval.sandboxed import run_batch
from scoder.sandbox import ExecResult


class SampleResult(BaseModel):
    """One sample's verdict (a row of samples.jsonl, EvalPlus format + ours)."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    sample_index: int
    solution: str
    completion: str | None = None  # the model's raw answer (or a samples file's completion)
    extraction: str | None = None  # how the program was found in the answer
    finish_reason: str | None = None
    completion_tokens: int | None = None
    passed: bool  # base tests (HumanEval, MBPP: all the tests)
    plus_passed: bool | None = None  # MBPP+: base and plus inputs
    status: str
    tests_passed: int
    tests_total: int
    detail: str = ""
    wall_s: float


@dataclass
class EvalOutcome:
    samples: list[SampleResult]
    excluded: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    isolation: str = ""


def evaluate_solutions(
    benchmark: str,
    tasks: Sequence[BenchmarkTask],
    solutions: dict[str, list[dict]],
    sandbox: SandboxConfig,
    *,
    benchmark_sha: str = "",
    time_factor: float = 4.0,
    canonical_timeout_s: float = 60.0,
) -> EvalOutcome:
    """Run every sample of every task in the sandbox; `solutions` maps task id -> rows with at
    least `solution` (a complete program). Tasks without rows are skipped."""
    started = time.perf_counter()
    excluded: dict[str, str] = {}
    expected: dict[str, Expected] = {}
    seconds: dict[str, float] = {}
    present = [t for t in tasks if solutions.get(t.task_id)]
    if benchmark == "mbppplus" and present:
        expected = expected_outputs(present, benchmark_sha, sandbox, canonical_timeout_s)
        for task_id, exp in expected.items():
            if exp.error:
                excluded[task_id] = exp.error
        seconds["expected_outputs_s"] = round(time.perf_counter() - started, 3)
    jobs, timeouts = [], []
    for task in present:
        if task.task_id in excluded:
            continue
        exp = expected.get(task.task_id)
        limit = _time_limit(sandbox.timeout_s, exp, time_factor)
        for j, row in enumerate(solutions[task.task_id]):
            row = {"sample_index": j, **row}
            jobs.append((task, row, program(benchmark, task, row["solution"], exp)))
            timeouts.append(limit)
    run_started = time.perf_counter()
    results = _run_grouped([j[2] for j in jobs], timeouts, sandbox)
    seconds["execution_s"] = round(time.perf_counter() - run_started, 3)
    samples = [
        _sample_result(benchmark, task, row, result)
        for (task, row, _), result in zip(jobs, results)
    ]
    isolation = results[0].isolation if results else ""
    return EvalOutcome(samples, excluded, seconds, isolation)


def _time_limit(base: float, exp: Expected | None, factor: float) -> float:
    """A sample may take `factor` times the canonical solution's time (plus that time again when
    the canonical solution runs in its process), never less than `base`. Longer limits are
    rounded up to base * 2^k: programs with the same limit share a batch of run_many."""
    if exp is None:
        return float(base)
    needed = (factor + exp.in_process) * exp.seconds + 1
    if needed <= base:
        return float(base)
    return float(base * 2 ** math.ceil(math.log2(needed / base)))


def _sample_result(
    benchmark: str, task: BenchmarkTask, row: dict, result: ExecResult
) -> SampleResult:
    if benchmark == "mbppplus":
        # test 1 = the base inputs, test 2 = base and plus inputs (the harness reports how many
        # passed; a sample passing test 2 passed the base inputs in it too)
        passed, plus = result.tests_passed >= 1, result.tests_passed == 2
    else:
        passed, plus = result.status == "passed", None
    return SampleResult(
        task_id=task.task_id,
        sample_index=row["sample_index"],
        solution=row["solution"],
        completion=row.get("completion"),
        extraction=row.get("extraction"),
        finish_reason=row.get("finish_reason"),
        completion_tokens=row.get("completion_tokens"),
        passed=passed,
        plus_passed=plus,
        status=result.status,
        tests_passed=result.tests_passed,
        tests_total=result.tests_total,
        detail=result.detail,
        wall_s=round(result.wall_s, 4),
    )


def _run_grouped(
    programs: list[tuple[str, str]], timeouts: list[float], sandbox: SandboxConfig
) -> list[ExecResult]:
    """run_many takes one timeout: programs that need a longer one run as their own batch."""
    results: list[ExecResult | None] = [None] * len(programs)
    for limit in sorted(set(timeouts)):
        indices = [i for i, t in enumerate(timeouts) if t == limit]
        for i, result in zip(indices, run_batch([programs[i] for i in indices], sandbox, limit)):
            results[i] = result
    return results  # type: ignore[return-value]  (every index is filled)
