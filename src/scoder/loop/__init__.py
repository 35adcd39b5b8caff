"""`scoder run`: the SCoder algorithm as a flat recipe of fingerprinted, typed steps.

    seeds    <- mine (and decontaminate) every seed the run needs, once
    D_p      <- the superior samples (teacher), decontaminated, split into train / held-out
    M_0      <- enhance: tune the synthesizer on D_p (round 0; one checkpoint per epoch)
    for r = 1..T:
        candidates <- N samples per fresh seed from each of M_{r-1}'s last M checkpoints
        pool       <- decontaminate(candidates)
        best       <- execute + judge + weigh; the best candidate per seed
        selected   <- top-k of best by influence on D_p (or judge score, or at random),
                      with random@k and judge-top@k beside it
        M_r        <- train on selected (+ D_p), from M_{r-1}'s last adapter
        summary    <- counts, mean selected score, held-out D_p loss, diversity
        stop early when the stopping rule says so
    dataset  <- the last synthesizer samples K fresh seeds; decontaminate; best per seed;
                dataset.jsonl + .parquet + data card
    (code model <- fine-tune on the dataset; evaluation <- scoder eval on each benchmark)

Each step is a module-level function that declares itself to the ledger (scoder.ledger) with the
config values it reads and the steps it consumes, and returns a handle to its typed result; the
stages themselves (scoder.seeds, synthesize, decontaminate, score, select, train, eval) write
their outputs where the next step reads them. A re-run of the same command resumes: finished steps
are reused, the one cut short continues from its saved chunks; a changed config re-runs exactly the
steps it reaches. `--force` discards everything the loop made.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scoder import executors
from scoder.config import Config
from scoder.errors import ScoderError
from scoder.ledger import LEDGER, Decision, Ledger, Step
from scoder.loop.context import Run
from scoder.loop.experiment import experiment_recipe
from scoder.loop.final import code_model, evaluate, final_dataset, lazy, tuned_model
from scoder.loop.inputs import seed_pool, superior_samples
from scoder.loop.results import Dataset, LoopResult, RoundSummary, Synthesizer
from scoder.loop.rounds import one_round, stop_reason, stopping_rule
from scoder.loop.training import enhance
from scoder.models import load_backend
from scoder.store import run_lock, write_json

__all__ = [
    "LOOP_OUTPUTS",
    "LoopResult",
    "RoundSummary",
    "Synthesizer",
    "discard_run",
    "plan_experiment",
    "plan_loop",
    "recipe",
    "run_experiment",
    "run_loop",
    "stop_reason",
]

# What the loop creates in a run directory (and --force removes): nothing else is touched.
LOOP_OUTPUTS = (
    "seeds",
    "decontaminate",
    "teacher",
    "dp",
    "rounds",
    "final",
    "eval",
    "code-model",
    "experiment",
    "experiment.json",
    "summary.json",
    "manifest.json",
    LEDGER,
)


def check(config: Config) -> None:
    """What `scoder run` needs that a stage alone does not, said at once, before any work."""
    problems = []
    if config.loop.enhance and config.teacher.route == "generate" and not config.teacher.limit:
        problems.append(
            "teacher.route=generate: set teacher.limit, the number of seeds the teacher writes "
            "D_p from (seeds of its own, apart from every round's)"
        )
    if problems:
        raise ScoderError("cannot run this config:\n  " + "\n  ".join(problems))


def recipe(run: Run) -> LoopResult | None:
    """The whole method, step by step (see the module docstring). Returns the run's summary, or
    None in a dry run (whose decisions are in the ledger)."""
    config, ledger = run.config, run.ledger
    check(config)
    loop = config.loop
    pool = seed_pool(run)
    dp = superior_samples(run, pool) if loop.enhance else None
    synthesizer = enhance(run, dp) if dp else None  # None: the base model writes the dataset
    summaries: list[Step[RoundSummary]] = []
    stopped = None
    for r in range(1, loop.rounds + 1):
        assert synthesizer is not None  # rounds need enhance (checked with the config)
        this = one_round(run, r, pool, dp, synthesizer)
        synthesizer = this.synthesizer
        summaries.append(this.summary)
        if r < loop.rounds:
            stop = ledger.known(stopping_rule(run, r, summaries))
            if stop is not None and stop.reason:
                stopped = {"after_round": r, "reason": stop.reason}
                break
    dataset = final_dataset(run, pool, synthesizer, summaries)
    tuned = code_model(run, dataset) if dataset and config.code_model.enabled else None
    evals = {}
    if tuned is not None:
        # prompted in the format it was trained in: the plain transcript when its training was
        plain = config.code_model.train.template == "plain"
        backend = lazy(lambda: load_backend(tuned_model(run, tuned), plain_transcript=plain))
        for benchmark in config.code_model.eval_benchmarks:
            evals[benchmark] = evaluate(run, tuned, benchmark, backend)
    if ledger.dry_run:
        return None
    final = dataset.result if dataset else Dataset(samples=0, dataset=None)
    return LoopResult(
        rounds=[s.result for s in summaries],
        stopped=stopped,
        final=final,
        code_model=tuned.result if tuned else None,
        eval={name: step.result for name, step in evals.items()},
    )


def discard_run(run_dir: Path) -> None:
    """Everything `scoder run` made in a run directory (what --force removes)."""
    for name in LOOP_OUTPUTS:
        target = Path(run_dir) / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def run_loop(
    config: Config,
    *,
    force: bool = False,
    report: Callable[[Decision], None] | None = None,
) -> LoopResult:
    """`scoder run`: every step of the method, resumable; returns the run's summary."""
    root = Path(config.run_dir)
    with run_lock(root, "scoder run"), executors.activate(config.executor):
        if force:
            discard_run(root)
        ledger = Ledger(root, report=report)
        result = recipe(Run(config, ledger))
        assert result is not None
        write_json(root / "summary.json", result.model_dump(mode="json"))
    return result


def plan_loop(config: Config) -> list[Decision]:
    """`scoder run --dry-run`: what a run would reuse, continue or (re-)run, and why."""
    ledger = Ledger(Path(config.run_dir), dry_run=True)
    recipe(Run(config, ledger))
    return ledger.decisions


def run_experiment(
    config: Config, *, force: bool = False, report: Callable[[Decision], None] | None = None
) -> dict[str, Any]:
    """`scoder experiment`: every step, resumable; writes and returns RUN/experiment.json."""
    root = Path(config.run_dir)
    with run_lock(root, "scoder experiment"), executors.activate(config.executor):
        if force:
            discard_run(root)
        table = experiment_recipe(Run(config, Ledger(root, report=report)))
        assert table is not None
        write_json(root / "experiment.json", table)
    return table


def plan_experiment(config: Config) -> list[Decision]:
    """`scoder experiment --dry-run`: what it would reuse, continue or (re-)run, and why."""
    ledger = Ledger(Path(config.run_dir), dry_run=True)
    experiment_recipe(Run(config, ledger))
    return ledger.decisions
