"""One round of self-distillation: sample from the previous synthesizer's checkpoints, decontaminate,
score, select, retrain, summarize; and the stopping rule after it. Sampling and scoring serve the
final stage too."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scoder import decontaminate, score, select, synthesize
from scoder.config import Config, LoopConfig, SelectionName
from scoder.errors import ScoderError
from scoder.ledger import Step
from scoder.loop.context import (
    Run,
    decontamination_reads,
    model_reads,
    score_reads,
    synthesis_reads,
)
from scoder.loop.inputs import seed_slice
from scoder.loop.results import (
    Candidates,
    Dp,
    RoundSummary,
    SeedPool,
    Seeds,
    Selection,
    Stop,
    Synthesizer,
)
from scoder.loop.training import retrain
from scoder.records import Candidate
from scoder.store import read_jsonl, write_json
from scoder.templates import SYNTHESIS_TEMPLATES


@dataclass
class Sampled:
    generated: Step[Candidates]  # what synthesis parsed
    pool: Step[Candidates]  # what survived decontamination (the same step when it is off)


def sample(
    run: Run,
    prefix: str,
    where: str,
    seed_slice_: Step[Seeds],
    synthesizer: Step[Synthesizer] | None,
    round_number: int,
    which: str,
    pick: Callable[[list[str]], list[str]],
    config: Config | None = None,
) -> Sampled:
    """N samples per seed from the synthesizer's checkpoints `pick` chooses (`which` says it),
    then decontaminated (one pair of steps serves the rounds and the final stage). `config`, when
    given, is the run's with a stage's own settings (the final stage's N)."""
    config = config or run.config

    def generate(discard: bool) -> Candidates:
        checkpoints = pick(synthesizer.result.checkpoints) if synthesizer else []
        if synthesizer and not checkpoints:
            raise ScoderError(
                f"{prefix}: the synthesizer it samples from has no checkpoint (its training "
                "saved none); nothing to sample from"
            )
        _, result = synthesize.run_synthesize(
            config,
            run.file(seed_slice_.result.seeds),
            run=run.at(where),
            checkpoints=[run.file(c) for c in checkpoints],
            round_number=round_number,
            force=discard,
        )
        kept = len(result.accepted)
        return Candidates(
            candidates=f"{where}/synthesize/kept.jsonl" if kept else None,
            count=kept,
            generated=kept + len(result.rejected),
        )

    sampled = run.ledger.step(
        f"{prefix}/synthesize",
        Candidates,
        code=synthesize.VERSION,
        reads={**synthesis_reads(config), "round": round_number, "checkpoints": which},
        after=[seed_slice_, synthesizer],
        outputs=[f"{where}/synthesize"],
        run=generate,
    )
    if not config.loop.decontaminate:
        return Sampled(sampled, sampled)

    def clean(discard: bool) -> Candidates:
        if not sampled.result.candidates:
            return Candidates(candidates=None, count=0)
        pool = read_jsonl(run.file(sampled.result.candidates), Candidate)
        kept = decontaminate.run_decontaminate(
            config, run.at(where), pool, "candidate", force=discard
        ).kept
        return Candidates(
            candidates=f"{where}/decontaminate/kept.jsonl" if kept else None, count=len(kept)
        )

    pool = run.ledger.step(
        f"{prefix}/decontaminate",
        Candidates,
        code=decontaminate.VERSION,
        reads=decontamination_reads(config),
        after=[sampled],
        outputs=[f"{where}/decontaminate"],
        run=clean,
    )
    return Sampled(sampled, pool)


def best_per_seed(
    run: Run,
    name: str,
    where: str,
    pool: Step[Candidates],
    scorer: bool,
    pick_seed: int,
    config: Config | None = None,
) -> Step[Candidates]:
    """Execute and judge the pool and keep the best candidate per seed (or, with the scorer
    off, a random one). `config`: the run's, unless a stage scores with settings of its own."""
    config = config or run.config

    def make(discard: bool) -> Candidates:
        if not pool.result.candidates:
            return Candidates(candidates=None, count=0)
        path = run.file(pool.result.candidates)
        unscored = None
        if scorer:
            _, result = score.run_score(config, path, run=run.at(where), force=discard)
            kept, unscored = len(result.selected), result.summary["unscored_rate"]
        else:
            _, picked = score.run_pick_random(
                config, path, seed=pick_seed, run=run.at(where), force=discard
            )
            kept = len(picked.kept)
        return Candidates(
            candidates=f"{where}/score/kept.jsonl" if kept else None,
            count=kept,
            unscored_rate=unscored,
        )

    reads: dict[str, Any] = {"scorer": scorer}
    reads.update(score_reads(config) if scorer else {"pick_seed": pick_seed})
    return run.ledger.step(
        name,
        Candidates,
        code=score.VERSION,
        reads=reads,
        after=[pool],
        outputs=[f"{where}/score"],
        run=make,
    )


def choose_top_k(
    run: Run,
    r: int,
    where: str,
    best: Step[Candidates],
    dp: Step[Dp] | None,
    synthesizer: Step[Synthesizer],
    *,
    strategy: SelectionName | None = None,
    draw: int | None = None,
    name: str | None = None,
    features: str | None = None,
) -> Step[Selection]:
    """The round's top-k by `loop.selection` (influence on D_p at the last select.checkpoints
    checkpoints of the synthesizer sampled from), with the budget-matched baselines beside it.
    An experiment's arm sets its own `strategy`, random `draw`, step `name`, and the directory
    whose feature store the arms share (`features`, relative to the run)."""
    config = run.config
    strategy = strategy or config.loop.selection
    draw = config.random_seed * 1_000 + r if draw is None else draw
    signal = strategy in ("influence", "rds")

    def make(discard: bool) -> Selection:
        if not best.result.candidates:
            return Selection(
                selected=None,
                count=0,
                mean_selected_score=None,
                baselines={name: None for name in select.BASELINES},
            )
        k = config.select.k or max(1, round(config.select.fraction * best.result.count))
        _, out = select.run_select(
            config,
            run.file(best.result.candidates),
            strategy=strategy,
            dp=run.file(dp.result.train) if dp else None,
            checkpoints=[run.file(c) for c in synthesizer.result.checkpoints],
            k=k,
            seed=draw,
            run=run.at(where),
            features_root=run.file(features) if features else None,
            force=discard,
        )
        scores = [c.score for c in out.kept if c.score is not None]
        return Selection(
            selected=f"{where}/select/kept.jsonl" if out.kept else None,
            count=len(out.kept),
            mean_selected_score=sum(scores) / len(scores) if scores else None,
            baselines={
                name: f"{where}/select/baselines/{name}.jsonl" if chosen else None
                for name, chosen in out.baselines.items()
            },
        )

    reads: dict[str, Any] = {
        "selection": strategy,
        "select": select.select_reads(config.select, strategy),
        "draw_seed": draw,
    }
    if signal:
        reads.update(
            model=model_reads(config.model, generation=False),
            train_format=[config.train.template, config.train.max_length],
            template_digest=SYNTHESIS_TEMPLATES[config.synthesis.template].digest,
        )
    return run.ledger.step(
        name or f"round-{r}/select",
        Selection,
        code=select.VERSION,
        reads=reads,
        after=[best, *([dp, synthesizer] if signal else [])],
        outputs=[f"{where}/select"],
        run=make,
    )


# --- one round ---------------------------------------------------------------------------------


@dataclass
class Round:
    synthesizer: Step[Synthesizer]
    summary: Step[RoundSummary]


def one_round(
    run: Run, r: int, pool: Step[SeedPool], dp: Step[Dp] | None, previous: Step[Synthesizer]
) -> Round:
    """Round r of self-distillation: sample, filter, select, retrain, summarize."""
    loop = run.config.loop
    where = f"rounds/{r}"

    def last_m(checkpoints: list[str]) -> list[str]:
        if loop.checkpoints and len(checkpoints) < loop.checkpoints:
            raise ScoderError(
                f"round {r}: loop.checkpoints={loop.checkpoints}, but the synthesizer it samples "
                f"from has {len(checkpoints)} checkpoint(s); lower loop.checkpoints or save more "
                "often (train.save_every_steps)"
            )
        return checkpoints[-loop.checkpoints :] if loop.checkpoints else list(checkpoints)

    which = f"last {loop.checkpoints}" if loop.checkpoints else "all"
    slice_ = seed_slice(
        run, pool, f"round-{r}/seeds", where, (r - 1) * loop.seeds_per_round, loop.seeds_per_round
    )
    sampled = sample(run, f"round-{r}", where, slice_, previous, r, which, last_m)
    best = best_per_seed(
        run,
        f"round-{r}/score",
        where,
        sampled.pool,
        loop.scorer,
        run.config.random_seed * 1_000 + r,
    )
    selection = choose_top_k(run, r, where, best, dp, previous)
    trained = retrain(
        run, f"round-{r}/train", where, lambda: selection.result.selected, dp, previous, selection
    )
    baselines = {}
    if loop.train_baselines:
        for name in select.BASELINES:
            baselines[name] = retrain(
                run,
                f"round-{r}/baseline-{name}",
                f"{where}/baselines/{name}",
                lambda name=name: selection.result.baselines[name],
                dp,
                previous,
                selection,
            )
    summary = summarize(run, r, previous, sampled, best, selection, trained, baselines, last_m)
    return Round(trained, summary)


def summarize(
    run: Run,
    r: int,
    previous: Step[Synthesizer],
    sampled: Sampled,
    best: Step[Candidates],
    selection: Step[Selection],
    trained: Step[Synthesizer],
    baselines: dict[str, Step[Synthesizer]],
    pick: Callable[[list[str]], list[str]],
) -> Step[RoundSummary]:
    loop = run.config.loop
    where = f"rounds/{r}"

    def make(discard: bool) -> RoundSummary:
        generated = sampled.generated.result
        chosen = selection.result
        picked = read_jsonl(run.file(chosen.selected), Candidate) if chosen.selected else []
        losses = None
        if loop.dp_heldout:
            losses = {
                loop.selection: trained.result.heldout_loss,
                **{name: b.result.heldout_loss for name, b in baselines.items()},
            }
        summary = RoundSummary(
            round=r,
            sampled_from=pick(previous.result.checkpoints),
            generated=generated.generated or 0,
            parsed=generated.count,
            decontaminated=sampled.pool.result.count if loop.decontaminate else None,
            best_per_seed=best.result.count,
            unscored_rate=best.result.unscored_rate,
            selected=chosen.count,
            selection=loop.selection,
            mean_selected_score=chosen.mean_selected_score,
            heldout_dp_loss=losses,
            diversity=diversity(picked),
            trained=trained.result,
        )
        write_json(run.path / where / "summary.json", summary.model_dump(mode="json"))
        return summary

    return run.ledger.step(
        f"round-{r}/summary",
        RoundSummary,
        code="summary/1",
        reads={"selection": loop.selection, "dp_heldout": loop.dp_heldout},
        after=[sampled.pool, best, selection, trained, *baselines.values()],
        outputs=[f"{where}/summary.json"],
        run=make,
    )


def diversity(candidates: list[Candidate], n: int = 4) -> dict[str, float | int]:
    """Distinct word n-grams over all n-grams of the problems + solutions: near 1 for varied
    samples, falling towards 0 as they collapse onto each other."""
    grams: list[tuple[str, ...]] = []
    for c in candidates:
        tokens = decontaminate.words(f"{c.problem or ''} {c.solution or ''}")
        grams += [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return {
        f"distinct_{n}grams": round(len(set(grams)) / len(grams), 4) if grams else 0.0,
        "samples": len(candidates),
    }


# --- stopping ----------------------------------------------------------------------------------


def stop_reason(loop: LoopConfig, summaries: Sequence[RoundSummary]) -> str | None:
    """Why the loop stops after the last of `summaries` (None: it goes on): nothing was selected
    to learn from, or `loop.stop_metric` improved by less than `loop.stop_min_delta`."""
    now = summaries[-1]
    if now.selected == 0 and not loop.mix_dp:
        return "empty_selection: no candidate survived to be selected"
    if loop.stop_metric == "none" or len(summaries) < 2:
        return None

    def value(s: RoundSummary) -> float | None:
        if loop.stop_metric == "mean_selected_score":
            return s.mean_selected_score
        loss = (s.heldout_dp_loss or {}).get(loop.selection)
        return -loss if loss is not None else None  # lower loss is better

    before, after = value(summaries[-2]), value(now)
    if before is None or after is None or after - before >= loop.stop_min_delta:
        return None
    return (
        f"{loop.stop_metric} improved by {after - before:.4g} < stop_min_delta="
        f"{loop.stop_min_delta} in round {now.round}"
    )


def stopping_rule(run: Run, r: int, summaries: list[Step[RoundSummary]]) -> Step[Stop]:
    """The stopping rule after round r, as a step (a resumed run stops where this one did)."""
    loop = run.config.loop
    return run.ledger.step(
        f"round-{r}/stop",
        Stop,
        code="stop/1",
        reads=loop.model_dump(
            mode="json", include={"stop_metric", "stop_min_delta", "mix_dp", "selection"}
        ),
        after=summaries[-2:],
        run=lambda discard: Stop(reason=stop_reason(loop, [s.result for s in summaries[-2:]])),
    )
