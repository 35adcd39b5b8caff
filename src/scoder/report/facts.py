"""What a run directory says about itself, read back from its files into plain typed values.

Every number the report shows comes from here, and every one is read from a file the stages
wrote (manifests, summaries, kept/dropped records): nothing is recomputed from the config.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoder.report.experiment import ExperimentFacts, read_experiment
from scoder.store import StoreError, read_jsonl

# Fields of a sample the browser shows; raw outputs and stderr stay in the run's own files.
SAMPLE_FIELDS = ("id", "round", "checkpoint", "seed_id", "problem", "solution", "tests")


@dataclass
class StageCost:
    stage: str
    seconds: float | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Agreement:
    """Does the judge's score of an aspect separate candidates that pass their tests from those
    that fail them? AUC 0.5 = no, 1.0 = perfectly."""

    aspect: str
    mean_passed: float | None
    mean_failed: float | None
    auc: float | None
    n_passed: int
    n_failed: int


@dataclass
class RoundFacts:
    round: int
    funnel: list[tuple[str, int | None]]
    drops: dict[str, dict[str, int]]  # stage -> reason -> count
    aspects: list[str]
    aspect_scores: dict[str, list[float]]
    weighted_scores: list[float]
    influence: list[float]  # of the pool selection ranked (defined values)
    top_k_cut: float | None  # the lowest influence kept
    baseline_influence: dict[str, list[float]]  # random_at_k / judge_top_at_k members' influence
    selection: str | None
    k: int | None
    per_checkpoint: dict[str, dict[str, int]]
    agreement: list[Agreement]
    diversity: dict[str, Any] | None
    costs: list[StageCost]
    heldout_dp_loss: dict[str, float | None] | None
    mean_selected_score: float | None
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunFacts:
    path: Path
    rounds: list[RoundFacts]
    final: RoundFacts | None
    evaluation: dict[str, dict[str, float]]
    stopped: dict[str, Any] | None
    config: dict[str, Any]
    # RUN/experiment.json (`scoder experiment`): None where absent, a sentence where unreadable
    experiment: ExperimentFacts | str | None = None


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path} is corrupt ({exc}); the report cannot read this run") from None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """A stage's records; a missing file is a stage that did not write it (a corrupt line is an
    error naming the file and line, as everywhere records are read)."""
    return read_jsonl(path) if path.is_file() else []


def _reasons(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter((r.get("drop") or {}).get("reason", "unknown") for r in rows))


def _sample(row: dict[str, Any], status: str) -> dict[str, Any]:
    execution = row.get("execution") or {}
    judge = row.get("judge") or {}
    drop = row.get("drop") or {}
    return {
        **{key: row.get(key) for key in SAMPLE_FIELDS},
        "status": status,
        "drop": f"{drop.get('stage')}: {drop.get('reason')}" if drop else "",
        "drop_detail": drop.get("detail", "") if drop else "",
        "execution": execution.get("status"),
        "tests_passed": execution.get("tests_passed"),
        "tests_total": execution.get("tests_total"),
        "scores": judge.get("scores"),
        "score": row.get("score"),
        "influence": row.get("influence"),
    }


def _agreement(scored: list[dict[str, Any]], aspects: list[str]) -> list[Agreement]:
    from scipy.stats import mannwhitneyu

    out = []
    for aspect in aspects:
        passed, failed = [], []
        for row in scored:
            value = ((row.get("judge") or {}).get("scores") or {}).get(aspect)
            status = (row.get("execution") or {}).get("status")
            if value is None or status is None:
                continue
            (passed if status == "passed" else failed).append(float(value))
        auc = None
        if passed and failed:
            u = mannwhitneyu(passed, failed, alternative="two-sided").statistic
            auc = float(u / (len(passed) * len(failed)))
        out.append(
            Agreement(
                aspect,
                sum(passed) / len(passed) if passed else None,
                sum(failed) / len(failed) if failed else None,
                auc,
                len(passed),
                len(failed),
            )
        )
    return out


def round_facts(
    where: Path, number: int, summary: dict[str, Any] | None, *, sample_limit: int
) -> RoundFacts:
    """The facts of one round directory (or the final stage's, which has no selection)."""
    stages = (_json(where / "manifest.json") or {}).get("stages") or {}
    counts = {name: stage.get("counts") or {} for name, stage in stages.items()}
    synth, decon = counts.get("synthesize", {}), counts.get("decontaminate", {})
    score, select = counts.get("score", {}), counts.get("select", {})
    scored = _jsonl(where / "score" / "scored.jsonl")
    funnel: list[tuple[str, int | None]] = [
        ("seeds", synth.get("seeds")),
        ("generated", synth.get("generated")),
        ("parsed", synth.get("accepted")),
        ("decontaminated", decon.get("kept") if decon else None),
        ("executed and passed", score.get("executed_passed")),
        ("scored by the judge", score.get("scored")),
        ("best per seed", score.get("selected")),
    ]
    if "select" in stages:
        funnel.append(("selected", select.get("selected")))
    # each stage's dropped records, read once: the drop table, the tallies and the browser use them
    dropped = {
        stage: _jsonl(where / stage / "dropped.jsonl")
        for stage in ("synthesize", "decontaminate", "score", "select")
        if (where / stage / "dropped.jsonl").is_file()
    }
    drops = {stage: _reasons(rows) for stage, rows in dropped.items()}
    weights = _json(where / "score" / "weights.json") or {}
    aspects = list((weights.get("weights") or {}).keys())
    if not aspects and scored:
        aspects = sorted({a for r in scored for a in ((r.get("judge") or {}).get("scores") or {})})
    aspect_scores = {
        a: [
            float(r["judge"]["scores"][a])
            for r in scored
            if ((r.get("judge") or {}).get("scores") or {}).get(a) is not None
        ]
        for a in aspects
    }
    kept = _jsonl(where / "select" / "kept.jsonl")
    ranked = kept + [r for r in dropped.get("select", []) if r.get("influence") is not None]
    influence = [float(r["influence"]) for r in ranked if r.get("influence") is not None]
    chosen = {r["id"]: r for r in ranked}  # what selection ranked, by id
    baselines = {
        name: [
            float(chosen[r["id"]]["influence"])
            for r in _jsonl(where / "select" / "baselines" / f"{name}.jsonl")
            if (chosen.get(r["id"]) or {}).get("influence") is not None
        ]
        for name in ("random_at_k", "judge_top_at_k")
    }
    kept_influence = [float(r["influence"]) for r in kept if r.get("influence") is not None]

    per_checkpoint: dict[str, Counter] = {}

    def tally(rows: list[dict[str, Any]], key: str) -> None:
        for r in rows:
            per_checkpoint.setdefault(r.get("checkpoint", "base"), Counter())[key] += 1

    synthesized = _jsonl(where / "synthesize" / "kept.jsonl")
    tally(synthesized + dropped.get("synthesize", []), "generated")
    tally(synthesized, "parsed")
    tally([r for r in scored if (r.get("execution") or {}).get("status") == "passed"], "passed")
    tally(_jsonl(where / "score" / "kept.jsonl"), "best per seed")
    tally(kept, "selected")

    costs = []
    for name, stage in stages.items():
        c = stage.get("counts") or {}
        costs.append(
            StageCost(
                name, stage.get("duration_s"), c.get("prompt_tokens"), c.get("completion_tokens")
            )
        )
    summary = summary or {}
    # scored.jsonl holds every candidate as judged; the stage's kept/dropped say what became of it
    score_drops = {r["id"]: r for r in dropped.get("score", [])}
    samples = [
        _sample(score_drops[r["id"]], "dropped")
        if r["id"] in score_drops
        else _sample(r, "best per seed")
        for r in scored
    ]
    seen = {s["id"] for s in samples}
    for stage in ("synthesize", "decontaminate"):
        samples += [
            _sample(r, "dropped") for r in dropped.get(stage, []) if r.get("id") not in seen
        ]
    selected_ids = {r["id"] for r in kept}
    for s in samples:
        if s["id"] in chosen:
            s["influence"] = chosen[s["id"]].get("influence")
            s["status"] = "selected" if s["id"] in selected_ids else "dropped"
            if s["id"] not in selected_ids and chosen[s["id"]].get("drop"):
                drop = chosen[s["id"]]["drop"]
                s["drop"], s["drop_detail"] = f"select: {drop['reason']}", drop.get("detail", "")
    return RoundFacts(
        round=number,
        funnel=funnel,
        drops=drops,
        aspects=aspects,
        aspect_scores=aspect_scores,
        weighted_scores=[float(r["score"]) for r in scored if r.get("score") is not None],
        influence=influence,
        top_k_cut=min(kept_influence) if kept_influence else None,
        baseline_influence=baselines,
        selection=summary.get("selection"),
        k=select.get("selected"),
        per_checkpoint={k: dict(v) for k, v in sorted(per_checkpoint.items())},
        agreement=_agreement(scored, aspects),
        diversity=summary.get("diversity"),
        costs=costs,
        heldout_dp_loss=summary.get("heldout_dp_loss"),
        mean_selected_score=summary.get("mean_selected_score"),
        samples=samples[:sample_limit],
    )


def run_facts(path: Path, *, sample_limit: int = 5000) -> RunFacts:
    """Everything the report shows, from the run directory at `path`."""
    summary = _json(path / "summary.json") or {}
    by_round = {s["round"]: s for s in summary.get("rounds") or []}
    numbers = sorted(
        int(p.name) for p in (path / "rounds").glob("*") if p.name.isdigit() and int(p.name) > 0
    )
    rounds = [
        round_facts(path / "rounds" / str(n), n, by_round.get(n), sample_limit=sample_limit)
        for n in numbers
        if (path / "rounds" / str(n) / "manifest.json").is_file()
    ]
    final = (
        round_facts(path / "final", 0, None, sample_limit=sample_limit)
        if (path / "final" / "manifest.json").is_file()
        else None
    )
    # pass@k per evaluated model ("base": the tuned code model itself; else an adapter's name)
    evaluation = {
        name: {
            (metric if model == "base" else f"{model} {metric}"): value
            for model, metrics in (score.get("pass_at_k") or {}).items()
            for metric, value in metrics.items()
        }
        for name, score in (summary.get("eval") or {}).items()
    }
    config = (_json(path / "manifest.json") or {}).get("config") or {}
    return RunFacts(
        path,
        rounds,
        final,
        evaluation,
        summary.get("stopped"),
        config,
        experiment=read_experiment(path),
    )
