"""Executing every sample of a benchmark in the sandbox, and the verdict of each.

Each sample runs in a process of its own (`scoder.sandbox.run_many`), with the time limit its
task allows: a multiple of the canonical solution's time for MBPP+ (never less than the sandbox's
`timeout_s`), rounded so that samples with the same limit share a batch. Given a parts directory,
verdicts are saved a chunk at a time: a killed evaluation resumes after its last finished chunk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from scoder.config import SandboxConfig
from scoder.eval.benchmarks import BenchmarkTask
from scoder.eval.mbppplus import Expected, expected_outputs
from scoder.eval.programs import program
from scoder.eval.sandboxed import run_batch
from scoder.sandbox import ExecResult
from scoder.store import resumable_chunks

# Samples executed per saved chunk: large enough that the sandbox's workers stay busy, small
# enough that a kill loses little.
EXECUTION_CHUNK = 256


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
    # An older run's rows carry their wall time; rows compared across runs no longer do.
    wall_s: float | None = Field(default=None, exclude=True)


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
    parts_dir: Path | None = None,
) -> EvalOutcome:
    """Run every sample of every task in the sandbox; `solutions` maps task id -> rows with at
    least `solution` (a complete program). Tasks without rows are skipped. With `parts_dir`,
    finished chunks are saved there and read back instead of run again."""
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
    isolations: list[str] = []

    def execute(_: int, chunk: Sequence[int]) -> list[SampleResult]:
        results = _run_grouped([jobs[i][2] for i in chunk], [timeouts[i] for i in chunk], sandbox)
        isolations.extend(r.isolation for r in results[:1])
        return [
            _sample_result(benchmark, jobs[i][0], jobs[i][1], result)
            for i, result in zip(chunk, results)
        ]

    indices = list(range(len(jobs)))
    if parts_dir is None:
        samples = execute(0, indices)
    else:
        samples = [
            sample
            for _, part, _ in resumable_chunks(
                indices, EXECUTION_CHUNK, parts_dir, SampleResult, execute
            )
            for sample in part
        ]
    seconds["execution_s"] = round(time.perf_counter() - run_started, 3)
    return EvalOutcome(samples, excluded, seconds, isolations[0] if isolations else "")


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
