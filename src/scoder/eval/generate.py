"""Generating answers with a model and turning them into programs: n answers per task, saved
chunk by chunk (a killed eval resumes where it stopped), each through `extract_program`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from scoder.config import EvalConfig
from scoder.eval.benchmarks import BenchmarkTask
from scoder.eval.extract import extract_program
from scoder.models.base import GenerationBackend, SamplingParams
from scoder.progress import track
from scoder.store import resumable_chunks
from scoder.templates import EVAL_TEMPLATES, EvalTemplate


def pick_template(
    backend: GenerationBackend, prompt: str, chat_id: str, completion_id: str
) -> EvalTemplate:
    """The chat template for a model that takes chats, else the completion one (`prompt` "auto"),
    or the one `prompt` names the mode of."""
    mode = prompt if prompt != "auto" else ("chat" if backend.uses_chat_template else "completion")
    return EVAL_TEMPLATES[chat_id if mode == "chat" else completion_id]


class GeneratedSample(BaseModel):
    """A model's raw answer to one task (saved as generation goes, so a killed eval resumes)."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    sample_index: int
    raw: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def generate_solutions(
    tasks: Sequence[BenchmarkTask],
    benchmark: str,
    backend: GenerationBackend,
    template: EvalTemplate,
    cfg: EvalConfig,
    *,
    parts_dir: Path,
    random_seed: int = 0,
) -> tuple[dict[str, list[dict]], float, int]:
    """n answers per task from the backend, turned into programs. Returns solutions rows by task id,
    the generation seconds of this call, and the tokens it generated."""
    spent = {"seconds": 0.0, "tokens": 0}

    def produce(number: int, chunk: Sequence[BenchmarkTask]) -> list[GeneratedSample]:
        params = SamplingParams.for_chunk(cfg, random_seed, number)
        started = time.perf_counter()
        outputs = backend.generate([template.chat(t, benchmark) for t in chunk], cfg.n, params)
        spent["seconds"] += time.perf_counter() - started
        rows = [
            GeneratedSample(
                task_id=task.task_id,
                sample_index=j,
                raw=c.text,
                finish_reason=c.finish_reason,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
            )
            for task, completions in zip(chunk, outputs)
            for j, c in enumerate(completions)
        ]
        spent["tokens"] += sum(r.completion_tokens for r in rows)
        return rows

    by_id = {t.task_id: t for t in tasks}
    solutions: dict[str, list[dict]] = {}
    with track(f"generating ({benchmark})", total=len(tasks), unit="tasks") as progress:
        for _, rows, _ in resumable_chunks(
            tasks, cfg.chunk_size, parts_dir, GeneratedSample, produce
        ):
            for r in rows:
                task = by_id[r.task_id]
                prefix = template.text(task, benchmark) if template.kind == "completion" else ""
                code, how = extract_program(r.raw, task, benchmark, prefix)
                solutions.setdefault(r.task_id, []).append(
                    {
                        "solution": code,
                        "completion": r.raw,
                        "extraction": how,
                        "sample_index": r.sample_index,
                        "finish_reason": r.finish_reason,
                        "completion_tokens": r.completion_tokens,
                    }
                )
            progress.advance(len({r.task_id for r in rows}))
    return solutions, spent["seconds"], spent["tokens"]
