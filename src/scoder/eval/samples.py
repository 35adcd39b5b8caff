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
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ScoderError(f"{where}: not UTF-8 ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ScoderError(f"{where}: not JSON ({exc.msg})") from None
            except (ValueError, RecursionError):  # an integer too long, nesting too deep
                raise ScoderError(f"{where}: not JSON this reader accepts") from None
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
