"""The final stage: the dataset the last synthesizer writes, then (when asked) a code model tuned
on it and its evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scoder import train
from scoder.config import ModelConfig
from scoder.dataset import data_card, write_dataset
from scoder.eval import EVALUATOR_VERSION, benchmark_file, run_eval
from scoder.ledger import Step
from scoder.loop.context import Run, model_reads
from scoder.loop.inputs import seed_slice
from scoder.loop.results import (
    CodeModel,
    Dataset,
    EvalScore,
    RoundSummary,
    SeedPool,
    Synthesizer,
)
from scoder.loop.rounds import best_per_seed, sample
from scoder.models import resolve_model
from scoder.records import Candidate
from scoder.store import RunDir, file_digest, read_jsonl


def final_dataset(
    run: Run,
    pool: Step[SeedPool],
    synthesizer: Step[Synthesizer] | None,
    summaries: list[Step[RoundSummary]],
) -> Step[Dataset] | None:
    """The last synthesizer (its last checkpoint) writes K samples on fresh seeds; they are
    decontaminated, verified and judged (best per seed) and exported with a data card that
    tells the rounds (`summaries`) apart."""
    config = run.config
    rounds_run = len(summaries)
    loop, final = config.loop, config.final
    if final.samples == 0:
        return None
    slice_ = seed_slice(
        run, pool, "final/seeds", "final", loop.rounds * loop.seeds_per_round, final.samples
    )
    # the final stage's own samples per seed and execution gate, where it sets them
    synthesis = config.synthesis.model_copy(update={"n": final.n or config.synthesis.n})
    gate = config.score.require_pass if final.require_pass is None else final.require_pass
    score = config.score.model_copy(update={"require_pass": gate})
    own = config.model_copy(update={"synthesis": synthesis, "score": score})
    sampled = sample(
        run, "final", "final", slice_, synthesizer, rounds_run + 1, "last", lambda c: c[-1:], own
    )
    kept = sampled.pool
    if final.score:
        kept = best_per_seed(run, "final/score", "final", sampled.pool, True, 0, own)
    upstream = list(run.ledger.declared)

    def make(discard: bool) -> Dataset:
        rows = read_jsonl(run.file(kept.result.candidates), Candidate) if kept.result.count else []
        writer = synthesizer.result.checkpoints[-1:] if synthesizer else []
        counts = {
            s.name: s.result.model_dump(mode="json")
            for s in upstream
            if not s.name.endswith(("/summary", "/stop"))
        }
        ref = resolve_model(config.model.name, revision=config.model.revision)
        rounds = [s.result.model_dump(mode="json") for s in summaries]
        card = data_card(config, ref, writer[0] if writer else None, rows, counts, rounds)
        write_dataset(run.path / "final", rows, card)
        return Dataset(samples=len(rows), dataset="final/dataset.jsonl")

    return run.ledger.step(
        "final/export",
        Dataset,
        code="export/2",
        reads={
            "final": final.model_dump(mode="json", include={"license", "score", "require_pass"}),
            "card": {
                "seeds_source": config.seeds.source,
                "teacher": config.teacher.model_dump(mode="json"),
                "loop": loop.model_dump(mode="json"),
                "model": model_reads(config.model),
            },
        },
        after=upstream,
        outputs=["final/dataset.jsonl", "final/README.md"],
        run=make,
    )


def code_model(
    run: Run,
    dataset: Step[Any],
    data: Callable[[], str | None] | None = None,
    where: str = "code-model",
) -> Step[CodeModel]:
    """Fine-tune the code model (its own `code_model` sections) on the dataset (or on the file
    `data()` names, e.g. an experiment arm's selection) into `where`; a LoRA is merged, so any
    tool loads the result. No per-epoch checkpoints: only the final model is wanted."""
    config = run.config
    data = data or (lambda: dataset.result.dataset)
    cfg = config.code_model
    model = cfg.model or config.model

    def make(discard: bool) -> CodeModel:
        _, out = train.run_train(
            config,
            run.file(data()),
            task="code",
            merge=True,
            model=model,
            train_cfg=cfg.train,
            checkpoints=False,
            run=run.at(where),
            force=discard,
        )
        return CodeModel(model=run.rel(out["merged_model"]), checkpoints=len(out["checkpoints"]))

    return run.ledger.step(
        where,
        CodeModel,
        code=train.VERSION,
        reads={
            "model": model_reads(model, generation=False),
            "train": cfg.train.identity(),
            "random_seed": config.random_seed,
        },
        after=[dataset],
        outputs=[where],
        run=make,
    )


def evaluate(
    run: Run, tuned: Step[CodeModel], benchmark: str, backend: Callable, where: str = ""
) -> Step[EvalScore]:
    """`scoder eval` of the code model on one benchmark (RUN/<where>eval/<benchmark>/), prompted
    the way it was trained (code_model.eval_prompt)."""
    config = run.config
    prompt = "chat" if config.code_model.eval_prompt == "sft" else "completion"

    def make(discard: bool) -> EvalScore:
        result = run_eval(
            config,
            benchmark,
            prompt=prompt,
            run=RunDir(run.path / where, root=run.path) if where else RunDir(run.path),
            backend=backend(),
            force=discard,
        )
        return EvalScore(
            pass_at_k=result.results["pass_at_k"], results=run.rel(result.results_path)
        )

    return run.ledger.step(
        f"{where}eval/{benchmark}",
        EvalScore,
        code=EVALUATOR_VERSION,
        reads={
            "eval": config.eval.model_dump(mode="json"),
            "eval_prompt": prompt,
            "benchmark_file": file_digest(benchmark_file(config, benchmark)),
            "random_seed": config.random_seed,
        },
        after=[tuned],
        outputs=[f"{where}eval/{benchmark}"],
        run=make,
    )


def tuned_model(run: Run, tuned: Step[CodeModel]) -> ModelConfig:
    """The tuned code model, loaded the way its base model was (device, dtype), in process."""
    base = run.config.code_model.model or run.config.model
    update = {
        "name": str(run.file(tuned.result.model)),
        "backend": "transformers",
        "revision": None,
    }
    return base.model_copy(update=update)


def lazy(make: Callable[[], Any]) -> Callable[[], Any]:
    """`make()` once, on first use (a backend is loaded only if a step needs it)."""
    made: list[Any] = []

    def get() -> Any:
        if not made:
            made.append(make())
        return made[0]

    return get
