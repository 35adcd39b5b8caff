"""`scoder experiment`: does the selection make better data? One round of the method, its pool
made once, then one synthesizer per selection arm x randomness seed, all at the same budget:

    seeds, D_p, M_0   <- as `scoder run` makes them (enhance on D_p)
    pool              <- N samples per seed from M_0, decontaminated, executed + judged, best
                         per seed: made once, shared by every arm
    signals           <- influence (LoRA gradients) and RDS+ (hidden states) of the pool and
                         D_p, computed once into the round's feature store; their cost recorded
    for arm in experiment.arms, seed in experiment.seeds:
        selected      <- the arm's k of the pool (all: the whole pool), drawn with `seed`
        M_arm         <- train on selected (+ D_p) from M_0's last adapter, seeded with `seed`
        measured      <- held-out D_p loss; M_arm's samples on the same fresh seeds: parse
                         rate, own-test pass rate, judge score; (a code model tuned on the
                         selection: pass@1 on each configured benchmark)
    table             <- mean, spread and range per arm and metric, each arm against random@k,
                         selection cost per arm (RUN/experiment.json, RUN/report.html)

Every step is a ledger step like the loop's: a re-run resumes, a changed config re-runs what
it reaches.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from scoder import score
from scoder.config import Config, SelectionName
from scoder.errors import ScoderError
from scoder.ledger import Step
from scoder.loop.context import Run, score_reads
from scoder.loop.final import code_model, evaluate, lazy, tuned_model
from scoder.loop.inputs import seed_pool, seed_slice, superior_samples
from scoder.loop.results import Candidates, Dp, EvalScore, Quality, Selection, Synthesizer
from scoder.loop.rounds import Sampled, best_per_seed, choose_top_k, sample
from scoder.loop.training import enhance, retrain
from scoder.models import load_backend
from scoder.store import RunDir

VERSION = "experiment/1"
ROUND = "rounds/1"  # the pool's round: its feature store is the one every arm reads
SIGNALS = {"influence": "influence", "rds": "RDS+"}  # the arms that compute a signal

# name -> (label, which way is better); pass@1 per benchmark is added where configured
METRICS: dict[str, tuple[str, Literal["lower", "higher"]]] = {
    "heldout_dp_loss": ("held-out D_p loss", "lower"),
    "parse_rate": ("next round: parsed", "higher"),
    "pass_rate": ("next round: own tests pass (of parsed)", "higher"),
    "judge_score": ("next round: judge score (0-9)", "higher"),
}


def experiment_config(config: Config) -> Config:
    """The run's config as the shared steps see it: one round, whose seeds come first, and the
    next round's fresh seeds where the loop's final stage would take its own."""
    loop = config.loop.model_copy(update={"rounds": 1})
    final = config.final.model_copy(update={"samples": next_seed_count(config)})
    return config.model_copy(update={"loop": loop, "final": final})


def next_seed_count(config: Config) -> int:
    return config.experiment.next_seeds or config.loop.seeds_per_round


def check(config: Config) -> None:
    """What an experiment needs, said at once, before any work."""
    loop, exp = config.loop, config.experiment
    problems = []
    if not loop.enhance:
        problems.append("loop.enhance=false: the arms train from the enhanced synthesizer M_0")
    if not loop.dp_heldout:
        problems.append(
            "loop.dp_heldout=0: set it (e.g. 8), the held-out D_p rows every arm is measured on"
        )
    if not loop.scorer and {"judge", "passed_random"} & set(exp.arms):
        problems.append("loop.scorer=false: the judge and passed_random arms need scores")
    if config.teacher.route == "generate" and not config.teacher.limit:
        problems.append("teacher.route=generate: set teacher.limit (the teacher's own seeds)")
    if problems:
        raise ScoderError("cannot run this experiment:\n  " + "\n  ".join(problems))


def experiment_recipe(run: Run) -> dict[str, Any] | None:
    """The experiment, step by step (see the module docstring). Returns experiment.json's
    content, or None in a dry run."""
    config = run.config
    check(config)
    run = Run(experiment_config(config), run.ledger)
    loop = config.loop
    pool = seed_pool(run)
    dp = superior_samples(run, pool)
    m0 = enhance(run, dp)

    def last_m(checkpoints: list[str]) -> list[str]:
        return checkpoints[-loop.checkpoints :] if loop.checkpoints else list(checkpoints)

    which = f"last {loop.checkpoints}" if loop.checkpoints else "all"
    first = seed_slice(run, pool, "round-1/seeds", ROUND, 0, loop.seeds_per_round)
    sampled = sample(run, "round-1", ROUND, first, m0, 1, which, last_m)
    seed = config.random_seed * 1_000 + 1
    best = best_per_seed(run, "round-1/score", ROUND, sampled.pool, loop.scorer, seed)
    signals = {
        arm: choose_top_k(
            run,
            1,
            f"experiment/signals/{arm}",
            best,
            dp,
            m0,
            strategy=arm,
            name=f"experiment/signals/{arm}",
            features=ROUND,
        )
        for arm in config.experiment.arms
        if arm in SIGNALS
    }
    fresh = seed_slice(
        run,
        pool,
        "experiment/next-seeds",
        "experiment",
        loop.seeds_per_round,
        next_seed_count(config),
    )
    arms = [
        one_arm(run, arm, s, best, dp, m0, fresh, which, last_m)
        for arm in config.experiment.arms
        for s in config.experiment.seeds
    ]
    if run.ledger.dry_run:
        return None
    return experiment_table(run, arms, best, sampled, signals)


class Arm:
    """One arm x seed's steps."""

    def __init__(
        self,
        arm: SelectionName,
        seed: int,
        selection: Step[Selection],
        trained: Step[Synthesizer],
        quality: Step[Quality],
        evals: dict[str, Step[EvalScore]],
    ) -> None:
        self.arm, self.seed, self.selection, self.trained = arm, seed, selection, trained
        self.quality, self.evals = quality, evals


def one_arm(
    run: Run,
    arm: SelectionName,
    seed: int,
    best: Step[Candidates],
    dp: Step[Dp],
    m0: Step[Synthesizer],
    fresh: Step[Any],
    which: str,
    last_m: Any,
) -> Arm:
    """Select by `arm` with `seed`, train, and measure: the steps of one arm x seed."""
    config = run.config.model_copy(update={"random_seed": seed})
    seeded = Run(config, run.ledger)  # training, sampling and judging seeded with `seed`
    where = f"experiment/{arm}/seed-{seed}"
    selection = choose_top_k(
        seeded,
        1,
        where,
        best,
        dp,
        m0,
        strategy=arm,
        draw=seed,
        name=f"{where}/select",
        features=ROUND,
    )
    trained = retrain(
        seeded, f"{where}/train", where, lambda: selection.result.selected, dp, m0, selection
    )
    nxt = sample(seeded, f"{where}/next", f"{where}/next", fresh, trained, 2, which, last_m)
    quality = next_quality(seeded, f"{where}/next", nxt)
    evals: dict[str, Step[EvalScore]] = {}
    benchmarks = config.code_model.eval_benchmarks if config.code_model.enabled else []
    if benchmarks:
        tuned = code_model(
            seeded, selection, lambda: selection.result.selected, where=f"{where}/code-model"
        )
        plain = config.code_model.train.template == "plain"
        backend = lazy(lambda: load_backend(tuned_model(seeded, tuned), plain_transcript=plain))
        for benchmark in benchmarks:
            evals[benchmark] = evaluate(seeded, tuned, benchmark, backend, where=f"{where}/")
    return Arm(arm, seed, selection, trained, quality, evals)


def next_quality(run: Run, where: str, sampled: Sampled) -> Step[Quality]:
    """Every sample the arm's synthesizer wrote on the fresh seeds, executed and judged (not
    only the best per seed): how many parse, how many pass their own tests, the judge's mean."""
    config = run.config

    def make(discard: bool) -> Quality:
        generated = sampled.generated.result
        pool = sampled.pool.result
        if not pool.candidates:
            return Quality(generated=generated.generated or 0, parsed=generated.count)
        _, result = score.run_score(
            config, run.file(pool.candidates), run=run.at(where), force=discard
        )
        rows = list(result.scored)
        judged = [c.judge.values for c in rows if c.judge is not None and c.judge.values]
        means = [sum(v.values()) / len(v) for v in judged if v]
        return Quality(
            generated=generated.generated or 0,
            parsed=generated.count,
            scored=len(rows),
            passed=sum(1 for c in rows if c.passed),
            judge_score=sum(means) / len(means) if means else None,
        )

    return run.ledger.step(
        f"{where}/score",
        Quality,
        code=f"{score.VERSION}+quality/1",
        reads=score_reads(config) | {"random_seed": config.random_seed},
        after=[sampled.generated, sampled.pool],
        outputs=[f"{where}/score"],
        run=make,
    )


# --- the table ---------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, range and count of one arm's values over seeds."""
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "values": []}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {
        "mean": mean,
        "std": std,
        "min": min(values),
        "max": max(values),
        "n": n,
        "values": values,
    }


def versus(ours: dict[str, Any], baseline: dict[str, Any], better: str) -> str | None:
    """An arm against random@k on one metric: better or worse only when the ranges over seeds do
    not overlap; else within the seed spread. None: fewer than two seeds on either side."""
    if ours["n"] < 2 or baseline["n"] < 2:
        return None
    if ours["max"] < baseline["min"]:
        return "better" if better == "lower" else "worse"
    if ours["min"] > baseline["max"]:
        return "worse" if better == "lower" else "better"
    return "within spread"


def _stage(run: Run, where: str, stage: str) -> dict[str, Any]:
    manifest = RunDir(run.path / where, root=run.path).load_manifest()
    return manifest.get("stages", {}).get(stage, {})


def experiment_table(
    run: Run,
    arms: list[Arm],
    best: Step[Candidates],
    sampled: Sampled,
    signals: dict[str, Step[Selection]],
) -> dict[str, Any]:
    """experiment.json: the design, the shared pool's cost, every run's numbers, and per arm
    its spread over seeds, its standing against random@k, and its selection cost."""
    config = run.config
    exp = config.experiment
    metrics = {
        name: {"label": label, "better": better} for name, (label, better) in METRICS.items()
    }
    benchmarks = config.code_model.eval_benchmarks if config.code_model.enabled else []
    for b in benchmarks:
        metrics[f"pass_at_1/{b}"] = {"label": f"code model pass@1 ({b})", "better": "higher"}
    runs = []
    for a in arms:
        q = a.quality.result
        values: dict[str, float | None] = {
            "heldout_dp_loss": a.trained.result.heldout_loss,
            "parse_rate": q.parsed / q.generated if q.generated else None,
            "pass_rate": q.passed / q.scored if q.scored else None,
            "judge_score": q.judge_score,
        }
        for b, step in a.evals.items():
            per_model = next(iter(step.result.pass_at_k.values()), {})
            values[f"pass_at_1/{b}"] = per_model.get("pass@1")
        runs.append(
            {
                "arm": a.arm,
                "seed": a.seed,
                "selected": a.selection.result.count,
                "metrics": values,
                "files": {
                    "selection": a.selection.result.selected,
                    "synthesizer": (a.trained.result.checkpoints or [None])[-1],
                    "next": f"experiment/{a.arm}/seed-{a.seed}/next/score/scored.jsonl",
                },
            }
        )
    score_stage = _stage(run, ROUND, "score")
    timings = score_stage.get("timings", {})
    costs = selection_costs(run, signals, timings)
    per_arm: dict[str, Any] = {}
    for arm in exp.arms:
        mine = [r for r in runs if r["arm"] == arm]
        per_arm[arm] = {
            "metrics": {
                m: spread([r["metrics"][m] for r in mine if r["metrics"].get(m) is not None])
                for m in metrics
            },
            "cost": costs[arm],
        }
    for arm, entry in per_arm.items():
        base = per_arm.get("random")
        entry["versus_random"] = (
            None
            if base is None or arm == "random"
            else {
                m: versus(entry["metrics"][m], base["metrics"][m], metrics[m]["better"])
                for m in metrics
            }
        )
    k_values = sorted({r["selected"] for r in runs if r["arm"] != "all"})
    table = {
        "version": VERSION,
        "design": {
            "arms": list(exp.arms),
            "seeds": list(exp.seeds),
            "k": k_values[0] if len(k_values) == 1 else k_values,
            "pool": best.result.count,
            "next_seeds": next_seed_count(config),
            "heldout_dp": config.loop.dp_heldout,
            "model": config.model.name or "embedded SmolLM2-135M-Instruct",
        },
        "shared": {
            "pool_candidates": best.result.count,
            "sampled": sampled.generated.result.generated,
            "sampling_s": _stage(run, ROUND, "synthesize").get("duration_s"),
            "execution_s": timings.get("execution_s"),
            "judge_s": timings.get("judge_s"),
        },
        "metrics": metrics,
        "runs": runs,
        "arms": per_arm,
    }
    table["findings"] = findings(table)
    return table


def selection_costs(
    run: Run, signals: dict[str, Step[Selection]], timings: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """What each arm's ranking cost beyond the shared pool: the signal's computation (measured
    where it was computed once), the judge and the sandbox that every pool's scoring runs."""
    config = run.config
    out: dict[str, dict[str, Any]] = {}
    for arm in config.experiment.arms:
        if arm in SIGNALS:
            cost = _stage(run, f"experiment/signals/{arm}", "select").get("selection_cost", {})
            what = (
                "LoRA gradient features (forward + backward) of pool + D_p"
                if arm == "influence"
                else "final hidden states (forward) of pool + D_p at one checkpoint"
            )
            out[arm] = {"seconds": cost.get("seconds"), "tokens": cost.get("tokens"), "what": what}
        elif arm == "judge":
            out[arm] = {
                "seconds": timings.get("judge_s"),
                "tokens": None,
                "what": "the judge's scores (shared: best-per-seed scoring needs them)",
            }
        elif arm == "passed_random":
            out[arm] = {
                "seconds": timings.get("execution_s"),
                "tokens": None,
                "what": "sandboxed tests (shared: scoring runs them)",
            }
        else:
            out[arm] = {"seconds": 0.0, "tokens": 0, "what": "none"}
    return out


def findings(table: dict[str, Any]) -> list[str]:
    """The table in sentences: per metric, which arms stand outside random@k's seed spread."""
    out = []
    arms = table["arms"]
    if "random" not in arms:
        return ["No random@k arm: nothing to measure the arms against."]
    for name, metric in table["metrics"].items():
        standing = {a: (e["versus_random"] or {}).get(name) for a, e in arms.items()}
        better = [a for a, s in standing.items() if s == "better"]
        worse = [a for a, s in standing.items() if s == "worse"]
        if all(s is None for a, s in standing.items() if a != "random"):
            continue
        if not better and not worse:
            out.append(f"{metric['label']}: no arm is outside random@k's seed spread.")
            continue
        parts = []
        if better:
            parts.append(f"better than random@k beyond the seed spread: {', '.join(better)}")
        if worse:
            parts.append(f"worse: {', '.join(worse)}")
        out.append(f"{metric['label']}: " + "; ".join(parts) + ".")
    influence, rds = arms.get("influence"), arms.get("rds")
    if influence and rds:
        for name, metric in table["metrics"].items():
            said = versus(influence["metrics"][name], rds["metrics"][name], metric["better"])
            if said is not None:
                out.append(f"{metric['label']}: influence against RDS+: {said}.")
    if influence and rds and influence["cost"]["seconds"] and rds["cost"]["seconds"]:
        ratio = influence["cost"]["seconds"] / rds["cost"]["seconds"]
        out.append(f"Influence cost {ratio:.1f}x RDS+'s time to compute.")
    return out
