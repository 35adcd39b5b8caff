"""Verify, judge, weigh, and keep the best candidate per seed.

1. verification: each candidate's solution runs against its own tests in the sandbox; tests that
   prove nothing (no assert, only constant asserts, never touching the solution) are marked
   vacuous, and a pass with them is not trusted;
2. judging (judge.py): a judge model rates Z aspects 0-9; an unusable answer is retried once,
   then the candidate is recorded as unscored with the reason (never a silent 0);
3. weights: score = sum_z w_z x_z, equal weights by default, or fitted to labels;
4. selection: the highest score per seed (ties: higher pass rate, then id), optionally requiring a
   trusted pass and a minimum score; every other candidate is kept with its reason;
5. calibration: how well each aspect separates passing from failing candidates (AUC,
   point-biserial), so a user sees which aspects carry signal.

The stage streams its pool: one chunk of candidates is in memory while it is run and judged;
weighing, calibration and the choice per seed read each candidate's small fields (score_weights.
Pool), and the output files are written one record at a time. A candidate's raw output and stderr
are written once, capped, to RUN/score/raw.jsonl; scored.jsonl, kept.jsonl and dropped.jsonl
(and select's files after them) refer to them (`Candidate.raw_ref`).
"""

from __future__ import annotations

import ast
import json
import random
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scoder.config import Config, ScoreConfig
from scoder.errors import ScoderError
from scoder.filters import DROPPED, KEPT, DropReasons, Partition, write_partition
from scoder.judge import judge
from scoder.models import GenerationBackend, load_backend
from scoder.progress import track
from scoder.records import (
    RAW_FILE,
    STDERR_CAP,
    Candidate,
    Execution,
    RawReader,
    StoredRecords,
    raw_texts,
    refer_raw,
    scan_candidates,
)
from scoder.sandbox import available_isolation, is_assertion, run_many
from scoder.score_weights import (
    EXECUTION_FEATURE,
    Pool,
    _concordance,
    calibration,
    combined_score,
    equal_weights,
    feature_names,
    features,
    fit_weights,
)
from scoder.store import (
    JsonlLines,
    RunDir,
    file_digest,
    fingerprint,
    iter_jsonl,
    jsonl_writer,
    line_offsets,
    part_path,
    resumable_chunks,
    write_json,
)
from scoder.templates import JUDGE_TEMPLATES

__all__ = [  # weighing and calibration live in score_weights and are part of this stage's API
    "EXECUTION_FEATURE",
    "REASONS",
    "STAGE",
    "VERSION",
    "Pool",
    "ScoreResult",
    "Verdicts",
    "_concordance",
    "best_per_seed",
    "calibration",
    "combined_score",
    "equal_weights",
    "feature_names",
    "features",
    "fit_weights",
    "pick_random_per_seed",
    "run_pick_random",
    "run_score",
    "select_best",
    "vacuous_tests",
    "verify",
]

STAGE = "score"
VERSION = "score/1"  # bump when the same settings would score or keep other candidates
ScoreDrop = Literal[
    "unscored",  # the judge gave no usable scores, after its retry
    "execution_failed",  # score.require_pass and the solution did not pass its own tests
    "below_min_score",
    "not_best_for_seed",
    "not_picked",  # the no-scorer ablation kept another candidate of the seed, at random
]
REASONS = DropReasons(STAGE, ScoreDrop)


# ----------------------------------------------------------------------------- verification


def vacuous_tests(solution: str, tests: str) -> str | None:
    """Why these tests cannot tell a right solution from a wrong one, or None."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError):
        return "tests do not parse"
    asserts = [node for node in ast.walk(tree) if is_assertion(node)]
    if not asserts:
        return "no assert statement"
    if all(_constant_assertion(a) for a in asserts):
        return "every assert is constant (e.g. assert True)"
    defined = _defined_names(solution)
    used = {n.id for a in asserts for n in ast.walk(a) if isinstance(n, ast.Name)}
    if defined and not used & defined:
        return "no assert uses a name the solution defines"
    return None


def _constant_assertion(node: ast.AST) -> bool:
    if isinstance(node, ast.Assert):
        return _is_constant(node.test)
    args = [*node.args, *(k.value for k in node.keywords)]  # self.assertTrue(True)
    return all(_is_constant(a) for a in args)


def _is_constant(expr: ast.AST) -> bool:
    return not any(
        isinstance(n, (ast.Name, ast.Call, ast.Attribute, ast.Subscript)) for n in ast.walk(expr)
    )


def _defined_names(code: str) -> set[str]:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def verify(candidates: Sequence[Candidate], cfg: ScoreConfig) -> list[Execution]:
    results = run_many(
        [(c.solution or "", c.tests or "") for c in candidates],
        timeout_s=cfg.sandbox.timeout_s,
        memory_mb=cfg.sandbox.memory_mb,
        workers=cfg.sandbox.workers,
        isolation=cfg.sandbox.isolation,
        prefork=cfg.sandbox.prefork,
    )
    return [
        Execution(
            status=r.status,
            tests_total=r.tests_total,
            tests_passed=r.tests_passed,
            pass_rate=r.pass_rate,
            isolation=r.isolation,
            detail=r.detail,
            stderr=r.stderr[-STDERR_CAP:],
            vacuous=vacuous_tests(c.solution or "", c.tests or ""),
        )
        for c, r in zip(candidates, results)
    ]


# ----------------------------------------------------------------------------- selection


@dataclass
class Verdicts:
    """What best-per-seed made of each candidate of a pool, by position, in the order the stage
    writes them: the kept, and the dropped with their reason and the better candidate (-1: none).
    Details are made when a record is written, so a pool's verdicts hold no text."""

    kept: list[int] = field(default_factory=list)
    dropped: list[tuple[int, str, int]] = field(default_factory=list)


def best_per_seed(pool: Pool, cfg: ScoreConfig) -> Verdicts:
    """The highest score per seed (ties: higher pass rate, then id); every other candidate with
    its reason. Seeds in sorted order, each seed's candidates in input order."""
    # A sort of the whole pool is inherent here; it sorts positions, the texts stay on disk.
    order = sorted(range(len(pool)), key=pool.seeds.__getitem__)
    trusted = pool.trusted_pass
    rates = np.where(pool.executed, pool.pass_rate, 0.0).tolist()
    out = Verdicts()
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and pool.seeds[order[end]] == pool.seeds[order[start]]:
            end += 1
        eligible = []
        for i in order[start:end]:
            score = pool.score(i)
            if score is None:
                out.dropped.append((i, "unscored", -1))
            elif cfg.require_pass and not trusted[i]:
                out.dropped.append((i, "execution_failed", -1))
            elif cfg.min_score is not None and score < cfg.min_score:
                out.dropped.append((i, "below_min_score", -1))
            else:
                eligible.append(i)
        eligible.sort(key=lambda i: (-pool.score(i), -rates[i], pool.ids[i]))  # type: ignore[operator]
        if eligible:
            out.kept.append(eligible[0])
            out.dropped += [(i, "not_best_for_seed", eligible[0]) for i in eligible[1:]]
        start = end
    return out


def verdict_detail(pool: Pool, cfg: ScoreConfig, i: int, reason: str, better: int) -> str:
    """What a drop's detail says about candidate i."""
    if reason == "unscored":
        return pool.reasons.get(i) if pool.is_judged(i) else "not judged"  # type: ignore[return-value]
    if reason == "execution_failed":
        return pool.vacuous[i] or pool.status[i] or "not run"
    if reason == "below_min_score":
        return f"{pool.score(i):.3f} < {cfg.min_score}"
    return f"{pool.ids[better]} scored {pool.score(better):.3f} >= {pool.score(i):.3f}"


def select_best(candidates: Sequence[Candidate], cfg: ScoreConfig) -> Partition[Candidate]:
    """The best candidate per seed; every other one with its reason."""
    pool = Pool.of(candidates)
    verdicts = best_per_seed(pool, cfg)
    out: Partition[Candidate] = Partition([candidates[i] for i in verdicts.kept])
    for i, reason, better in verdicts.dropped:
        related = pool.ids[better] if better >= 0 else None
        detail = verdict_detail(pool, cfg, i, reason, better)
        out.dropped.append(REASONS.drop(candidates[i], reason, detail, related))
    return out


def random_per_seed(ids: Sequence[str], seeds: Sequence[str], seed: int) -> Verdicts:
    """The 'no scorer' ablation over positions: one candidate per seed, chosen at random
    (reproducibly); seeds in sorted order, each seed's candidates by id."""
    order = sorted(range(len(ids)), key=lambda i: (seeds[i], ids[i]))  # stable: as by_seed was
    rng = random.Random(seed)
    out = Verdicts()
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and seeds[order[end]] == seeds[order[start]]:
            end += 1
        group = order[start:end]
        chosen = rng.choice(group)
        out.kept.append(chosen)
        out.dropped += [(i, "not_picked", chosen) for i in group if i != chosen]
        start = end
    return out


def pick_random_per_seed(candidates: Sequence[Candidate], seed: int) -> Partition[Candidate]:
    """The 'no scorer' ablation: one candidate per seed, chosen at random (reproducibly)."""
    verdicts = random_per_seed([c.id for c in candidates], [c.seed_id for c in candidates], seed)
    out: Partition[Candidate] = Partition([candidates[i] for i in verdicts.kept])
    for i, _, chosen in verdicts.dropped:
        picked = candidates[chosen].id
        out.dropped.append(
            REASONS.drop(candidates[i], "not_picked", f"{picked} was picked", picked)
        )
    return out


# ----------------------------------------------------------------------------- the stage


@dataclass
class ScoreResult:
    """What the stage wrote. The records are read from its files when used (a pool is never
    held): scored.jsonl, kept.jsonl, dropped.jsonl, their raw texts referenced in raw.jsonl."""

    scored: Sequence[Candidate] = field(default_factory=list)
    selected: Sequence[Candidate] = field(default_factory=list)
    rejected: Sequence[Candidate] = field(default_factory=list)
    weights: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _weights(config: Config, pool: Pool, fit_labels: str | None) -> dict[str, Any]:
    cfg = config.score
    if fit_labels:
        names = [a.name for a in cfg.aspects] + [EXECUTION_FEATURE]
        if fit_labels != "execution" and not Path(fit_labels).is_file():
            raise ScoderError(f"labels file not found: {fit_labels}")
        info = fit_weights(pool, fit_labels, names, seed=config.random_seed)
        info["source"] = "fitted"
        return info
    if cfg.weights_file:
        if not Path(cfg.weights_file).is_file():
            raise ScoderError(f"score.weights_file not found: {cfg.weights_file}")
        info = json.loads(Path(cfg.weights_file).read_text())
        unknown = set(info.get("weights", {})) - {a.name for a in cfg.aspects} - {EXECUTION_FEATURE}
        if unknown:
            raise ScoderError(
                f"{cfg.weights_file} weighs aspects this config does not judge: {sorted(unknown)}"
            )
        return {**info, "source": str(cfg.weights_file)}
    if cfg.weights:
        return {"weights": dict(cfg.weights), "source": "config"}
    return {"weights": equal_weights(cfg), "source": "equal"}


@dataclass
class _Parts:
    """Where each candidate of the pool is in the stage's parts: file number and byte offset."""

    paths: list[Path] = field(default_factory=list)
    file: array = field(default_factory=lambda: array("i"))
    offset: array = field(default_factory=lambda: array("q"))

    def add(self, path: Path, count: int) -> None:
        offsets = line_offsets(path)
        if len(offsets) != count:
            raise ScoderError(f"{path} holds {len(offsets)} records, not the {count} it was given")
        self.file.extend([len(self.paths)] * count)
        self.offset.extend(offsets)
        self.paths.append(path)


def _write_outputs(
    out: Path, parts: _Parts, pool: Pool, verdicts: Verdicts, cfg: ScoreConfig
) -> dict[str, Any]:
    """scored.jsonl (input order), kept.jsonl and dropped.jsonl (the verdicts' order), one record
    at a time from the parts; each candidate's raw texts are written once, to raw.jsonl, and the
    three files refer to them."""
    raw_at = array("q")
    with jsonl_writer(out / RAW_FILE) as write_raw, jsonl_writer(out / "scored.jsonl") as write:
        i = 0
        for path in parts.paths:
            for c in iter_jsonl(path, Candidate):
                raw_at.append(write_raw(raw_texts(c)))
                write(
                    refer_raw(
                        c.model_copy(update={"score": pool.score(i)}), f"{RAW_FILE}#{raw_at[i]}"
                    )
                )
                i += 1

    with JsonlLines(parts.paths) as lines:

        def scored(i: int) -> Candidate:
            c = lines.record(parts.file[i], parts.offset[i], Candidate)
            return refer_raw(
                c.model_copy(update={"score": pool.score(i)}), f"{RAW_FILE}#{raw_at[i]}"
            )

        def dropped() -> Any:
            for i, reason, better in verdicts.dropped:
                related = pool.ids[better] if better >= 0 else None
                detail = verdict_detail(pool, cfg, i, reason, better)
                yield REASONS.drop(scored(i), reason, detail, related)

        return write_partition(out, (scored(i) for i in verdicts.kept), dropped())


def _summary(pool: Pool, verdicts: Verdicts, names: list[str]) -> dict[str, Any]:
    has_scores = pool.has_scores
    judged = pool.judged
    per_checkpoint: dict[str | None, dict[str, int]] = {}  # in the order checkpoints appear
    for checkpoint in pool.checkpoints:
        per_checkpoint.setdefault(checkpoint, {"candidates": 0, "selected": 0})["candidates"] += 1
    for i in verdicts.kept:
        per_checkpoint[pool.checkpoints[i]]["selected"] += 1
    return {
        "calibration": calibration(pool, names),
        "per_checkpoint": per_checkpoint,
        "execution_status": dict(Counter(s for s in pool.status if s is not None)),
        "vacuous_tests": sum(1 for s, v in zip(pool.status, pool.vacuous) if s is not None and v),
        "unscored_rate": round(int((~pool.scored).sum()) / len(pool), 4) if len(pool) else None,
        "judge_methods": dict(Counter(m for m, j in zip(pool.method, judged) if j)),
        "unscored_reasons": dict(
            Counter(
                (pool.reasons.get(int(i)) or "").split(":")[0]
                for i in np.flatnonzero(pool.scores_none)
            )
        ),
        "mean_aspect_scores": {
            n: round(float(np.mean(pool.values(n)[has_scores])), 3)
            for n in names
            if has_scores.any()
        },
    }


def run_score(
    config: Config,
    candidates_path: Path | None = None,
    *,
    run: RunDir | None = None,
    fit_labels: str | None = None,
    backend: GenerationBackend | None = None,
    force: bool = False,
) -> tuple[RunDir, ScoreResult]:
    """`scoder score`: candidates -> RUN/score/scored.jsonl (every candidate, executed and
    judged), kept.jsonl (the best per seed) and dropped.jsonl (the others, with reasons), their
    raw outputs and stderr once in raw.jsonl. The pool streams: one chunk of candidates is in
    memory at a time, and of the whole pool only its small fields (`Pool`)."""
    cfg = config.score
    run = run or RunDir(config.run_dir)
    candidates_path = Path(candidates_path or run.stage_dir("synthesize") / "kept.jsonl")
    candidates = scan_candidates(candidates_path, "synthesize")
    isolation = available_isolation() if cfg.sandbox.isolation == "auto" else cfg.sandbox.isolation
    template = JUDGE_TEMPLATES[cfg.template]
    judge_model: dict[str, Any] = {}

    def get_backend() -> GenerationBackend:
        nonlocal backend
        if backend is None:
            backend = load_backend(cfg.judge)
        return backend

    # Parts depend on the judge, the prompt, the aspects and the sandbox, not on weights or
    # selection rules: changing those re-selects without judging again.
    judged_by = cfg.model_dump(
        mode="json",
        include={
            "judge",
            "template",
            "scoring",
            "aspects",
            "max_new_tokens",
            "retry_temperature",
            "sandbox",
            "chunk_size",
        },
    )
    stage_fp = fingerprint(
        {
            "score": judged_by,
            "template": template.digest,
            "candidates": file_digest(candidates_path),
            "random_seed": config.random_seed,
            "isolation": isolation,
        }
    )
    timings = {"execution_s": 0.0, "judge_s": 0.0}
    with run.stage(STAGE, config=config, fingerprint=stage_fp, force=force) as record:
        out = run.stage_dir(STAGE)
        inputs = RawReader(candidates_path.parent)

        def produce(number: int, chunk: Sequence[Candidate]) -> list[Candidate]:
            # a part holds its records whole: an input that refers to its raw texts inlines them
            chunk = [inputs.inline(c) for c in chunk]
            started = time.perf_counter()
            executions = verify(chunk, cfg)
            timings["execution_s"] += time.perf_counter() - started
            started = time.perf_counter()
            b = get_backend()
            b.use_request_log(out / "requests.jsonl")
            judge_model.update(b.describe())
            judgements = judge(chunk, b, cfg, seed=config.random_seed * 100_003 + number)
            timings["judge_s"] += time.perf_counter() - started
            return [
                c.model_copy(update={"execution": e, "judge": j})
                for c, e, j in zip(chunk, executions, judgements)
            ]

        names = [a.name for a in cfg.aspects]
        pool, parts = Pool(names), _Parts()
        resumed = passed = 0
        with track(
            "scoring (execution + judge)", total=len(candidates), unit="candidates"
        ) as progress:
            for number, (_, records, was_resumed) in enumerate(
                resumable_chunks(candidates, cfg.chunk_size, out / "parts", Candidate, produce)
            ):
                for c in records:
                    pool.add(c)
                parts.add(part_path(out / "parts", number), len(records))
                resumed += was_resumed
                passed += sum(1 for c in records if c.execution and c.execution.status == "passed")
                progress.advance(len(records), passed=passed)
        inputs.close()
        candidates.close()

        weights_info = _weights(config, pool, fit_labels)
        pool.set_scores(pool.weighted_scores(weights_info["weights"]))
        verdicts = best_per_seed(pool, cfg)
        summary = {"weights": weights_info, **_summary(pool, verdicts, names)}
        counts = _write_outputs(out, parts, pool, verdicts, cfg)
        write_json(out / "weights.json", weights_info)
        write_json(out / "summary.json", summary)
        scored = int(pool.scored.sum())
        record.counts = {
            "candidates": len(pool),
            "seeds": len(set(pool.seeds)),
            "scored": scored,
            "unscored": len(pool) - scored,
            "executed_passed": int(pool.trusted_pass.sum()),
            "selected": counts["kept"],
            "rejected": counts["dropped"],
            "rejected_by_reason": counts["dropped_by_reason"],
            "resumed_chunks": resumed,
        }
        record.info.update(
            {
                "sandbox": {**cfg.sandbox.model_dump(mode="json"), "isolation_used": isolation},
                "judge": judge_model or None,
                "template": {"id": template.id, "digest": template.digest},
                "weights": weights_info,
                "calibration": summary["calibration"],
                "judging": {
                    k: summary[k] for k in ("unscored_rate", "judge_methods", "unscored_reasons")
                },
                "timings": {k: round(v, 3) for k, v in timings.items()},
            }
        )
    result = ScoreResult(
        StoredRecords(out / "scored.jsonl", Candidate, count=len(pool)),
        StoredRecords(out / KEPT, Candidate, count=counts["kept"]),
        StoredRecords(out / DROPPED, Candidate, count=counts["dropped"]),
        weights_info,
        summary,
    )
    return run, result


def run_pick_random(
    config: Config,
    candidates_path: Path,
    *,
    seed: int,
    run: RunDir | None = None,
    force: bool = False,
) -> tuple[RunDir, Partition[Candidate]]:
    """The score stage of the 'no scorer' ablation: a random candidate per seed, nothing run or
    judged (RUN/score/kept.jsonl, dropped.jsonl)."""
    run = run or RunDir(config.run_dir)
    ids: list[str] = []
    seeds: dict[str, str] = {}
    seed_of: list[str] = []

    def note(c: Candidate) -> None:
        ids.append(c.id)
        seed_of.append(seeds.setdefault(c.seed_id, c.seed_id))

    candidates = scan_candidates(Path(candidates_path), "synthesize", each=note)
    stage_fp = fingerprint(
        {"pick": "random", "seed": seed, "candidates": file_digest(candidates_path)}
    )
    with run.stage(STAGE, config=config, fingerprint=stage_fp, force=force) as record:
        verdicts = random_per_seed(ids, seed_of, seed)
        out = run.stage_dir(STAGE)
        kept = StoredRecords(out / KEPT, Candidate, count=len(verdicts.kept))
        dropped = StoredRecords(out / DROPPED, Candidate, count=len(verdicts.dropped))

        def drops() -> Any:
            positions = [i for i, _, _ in verdicts.dropped]
            for c, (_, _, chosen) in zip(candidates.read(positions), verdicts.dropped):
                yield REASONS.drop(c, "not_picked", f"{ids[chosen]} was picked", ids[chosen])

        record.counts = write_partition(out, candidates.read(verdicts.kept), drops())
        candidates.close()
        record.info["scorer"] = "none: a random candidate per seed (ablation)"
    return run, Partition(kept, dropped)  # type: ignore[arg-type]
