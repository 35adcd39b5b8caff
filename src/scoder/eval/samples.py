"""Samples files in EvalPlus's format: what `scoder eval --samples` scores instead of generating."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from scoder.errors import ScoderError
from scoder.eval.benchmarks import EXCLUDED, BenchmarkTask


def load_samples(
    path: Path, benchmark: str, tasks: Sequence[BenchmarkTask]
) -> dict[str, list[dict]]:
    """An EvalPlus-format samples file: JSONL rows with `task_id` and `solution` (a complete
    program) or `completion` (HumanEval: appended to the prompt). Several rows of one task are its
    n samples. Malformed lines and unknown task ids are errors naming the line."""
    if not path.is_file():
        raise ScoderError(f"samples file not found: {path}")
    by_id = {t.task_id: t for t in tasks}
    excluded = EXCLUDED.get(benchmark, {})
    out: dict[str, list[dict]] = {}
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ScoderError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("task_id"), str):
                raise ScoderError(f"{where}: a samples row needs a string task_id")
            task_id = row["task_id"]
            if task_id in excluded:
                continue
            task = by_id.get(task_id)
            if task is None:
                raise ScoderError(
                    f"{where}: unknown task id {task_id!r} for benchmark {benchmark} "
                    f"(ids look like {next(iter(by_id))!r})"
                )
            solution, completion = row.get("solution"), row.get("completion")
            if isinstance(solution, str):
                code = solution
            elif isinstance(completion, str):
                code = task.prompt + completion if benchmark == "humaneval" else completion
            else:
                raise ScoderError(f"{where}: a samples row needs a string solution or completion")
            samples = out.setdefault(task_id, [])
            samples.append(
                {
                    "solution": code,
                    "completion": completion if isinstance(completion, str) else None,
                    "sample_index": len(samples),
                }
            )
    if not out:
        raise ScoderError(f"{path} holds no samples for benchmark {benchmark}")
    return out
