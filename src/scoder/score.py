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
"""

from __future__ import annotations

import ast
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scoder.config import Config, ScoreConfig
from scoder.errors import ScoderError
from scoder.filters import DropReasons, Partition
from scoder.judge import judge
from scoder.models import GenerationBackend, load_backend
from scoder.progress import track
from scoder.records import Candidate, Execution, load_candidates
from scoder.sandbox import available_isolation, is_assertion, run_many
from scoder.store import (
    RunDir,
    file_digest,
    fingerprint,
    read_jsonl,
    resumable_chunks,
    write_json,
    write_jsonl,
)
from scoder.templates import JUDGE_TEMPLATES

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
EXECUTION_FEATURE = "execution"  # pass rate scaled to 0-9, usable as an extra weighted feature


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
    )
    return [
        Execution(
            status=r.status,
            tests_total=r.tests_total,
            tests_passed=r.tests_passed,
            pass_rate=r.pass_rate,
            isolation=r.isolation,
            detail=r.detail,
            stderr=r.stderr[-2000:],
            vacuous=vacuous_tests(c.solution or "", c.tests or ""),
        )
        for c, r in zip(candidates, results)
    ]


# ----------------------------------------------------------------------------- weights


def feature_names(cfg: ScoreConfig, weights: dict[str, float]) -> list[str]:
    names = [a.name for a in cfg.aspects]
    return [*names, EXECUTION_FEATURE] if EXECUTION_FEATURE in weights else names


def features(c: Candidate, names: Sequence[str]) -> list[float] | None:
    values = c.judge.values if c.judge is not None else None
    if values is None:
        return None
    row = []
    for name in names:
        if name == EXECUTION_FEATURE:
            trusted = c.execution is not None and c.execution.vacuous is None
            row.append(9.0 * c.execution.pass_rate if trusted else 0.0)
        else:
            row.append(float(values[name]))
    return row


def combined_score(c: Candidate, weights: dict[str, float]) -> float | None:
    row = features(c, list(weights))
    if row is None:
        return None
    return float(np.dot(row, list(weights.values())))


def equal_weights(cfg: ScoreConfig) -> dict[str, float]:
    return {a.name: 1.0 / len(cfg.aspects) for a in cfg.aspects}


def _tied_pairs(values: np.ndarray) -> int:
    counts = np.unique(values, return_counts=True)[1].astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _concordance(pred: np.ndarray, label: np.ndarray) -> float:
    """Fraction of pairs with different labels that the prediction orders the same way (ties 1/2),
    in O(n log n) time and O(n) memory (pairs are never listed: at 100K candidates they would
    be 80 GB). With C, D and T the concordant, discordant and prediction-tied pairs among the M
    label-distinct ones, it is (C + T/2) / M = 1/2 + S / 2M, where S = C - D is Kendall's S,
    recovered from tau-b = S / sqrt((n0 - n1)(n0 - n2))."""
    from scipy.stats import kendalltau

    n0 = len(label) * (len(label) - 1) // 2
    distinct = n0 - _tied_pairs(label)
    if distinct == 0:
        return float("nan")
    tau = kendalltau(pred, label).statistic
    if np.isnan(tau):  # every prediction tied: each pair counts one half
        return 0.5
    s = tau * np.sqrt(float(n0 - _tied_pairs(pred)) * float(distinct))
    return float(0.5 + s / (2 * distinct))


def _fit_quality(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    design = np.hstack([x, np.ones((len(x), 1))])  # the intercept does not change rankings
    w, _ = nnls(design, y)
    return w[:-1]


def _fit_pairwise(d: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Bradley-Terry / pairwise logistic fit with non-negative weights (L-BFGS-B)."""
    from scipy.optimize import minimize
    from scipy.special import expit, log1p

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        margin = d @ w
        value = np.sum(log1p(np.exp(-np.abs(margin))) + np.maximum(-margin, 0)) + l2 * w @ w
        grad = -(d.T @ expit(-margin)) + 2 * l2 * w
        return float(value), grad

    res = minimize(
        loss, np.full(d.shape[1], 0.1), jac=True, method="L-BFGS-B", bounds=[(0, None)] * d.shape[1]
    )
    return res.x


def fit_weights(
    scored: Sequence[Candidate],
    labels: str | Path,
    names: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit non-negative weights to labels; report held-out agreement against equal weights.

    `labels` is a JSONL file with either {"candidate_id", "label"} rows (a quality label) or
    {"preferred", "rejected"} rows (candidate ids, a pairwise preference), or the word
    "execution" (each candidate's execution pass rate is its label).
    """
    by_id = {c.id: c for c in scored}
    rows = _label_rows(scored, labels)
    kind = "pairwise" if rows and "preferred" in rows[0] else "quality"
    names = [n for n in names if not (labels == "execution" and n == EXECUTION_FEATURE)]
    rng = np.random.default_rng(seed)
    skipped = 0
    if kind == "quality":
        x, y = [], []
        for r in rows:
            c = by_id.get(str(r.get("candidate_id")))
            f = features(c, names) if c else None
            if f is None or not isinstance(r.get("label"), (int, float)):
                skipped += 1
                continue
            x.append(f)
            y.append(float(r["label"]))
        x_arr, y_arr = np.array(x), np.array(y)
        if len(y_arr) < 4 or np.ptp(y_arr) == 0:
            raise ScoderError(
                f"--fit-weights needs at least 4 scored, labelled candidates with different labels (got {len(y_arr)})"
            )
        fit, agreement = _fit_quality, lambda w, idx: _concordance(x_arr[idx] @ w, y_arr[idx])
        n = len(y_arr)
    else:
        diffs = []
        for r in rows:
            a, b = by_id.get(str(r.get("preferred"))), by_id.get(str(r.get("rejected")))
            fa, fb = (features(a, names) if a else None), (features(b, names) if b else None)
            if fa is None or fb is None:
                skipped += 1
                continue
            diffs.append(np.array(fa) - np.array(fb))
        d_arr = np.array(diffs)
        if len(d_arr) < 4:
            raise ScoderError(
                f"--fit-weights needs at least 4 pairs of scored candidates (got {len(d_arr)})"
            )
        fit = _fit_pairwise  # type: ignore[assignment]

        def agreement(w: np.ndarray, idx: np.ndarray) -> float:
            m = d_arr[idx] @ w
            return float(np.mean((m > 0) + 0.5 * (m == 0)))

        x_arr = d_arr
        n = len(d_arr)

    data = (x_arr, y_arr) if kind == "quality" else (x_arr,)
    order = rng.permutation(n)
    k = min(folds, n)
    heldout, baseline = [], []
    equal = np.full(len(names), 1.0 / len(names))
    for fold in range(k):
        test = order[fold::k]
        train = np.setdiff1d(order, test)
        w = fit(*(a[train] for a in data))
        heldout.append(agreement(w, test))
        baseline.append(agreement(equal, test))
    w = fit(*data)
    total = w.sum()
    weights = {
        name: float(v / total) if total > 0 else 1.0 / len(names) for name, v in zip(names, w)
    }
    return {
        "weights": weights,
        "kind": kind,
        "labels": str(labels),
        "n": int(n),
        "skipped": skipped,
        "folds": k,
        "heldout_agreement": float(np.nanmean(heldout)),
        "equal_weights_heldout_agreement": float(np.nanmean(baseline)),
    }


def _label_rows(scored: Sequence[Candidate], labels: str | Path) -> list[dict]:
    if str(labels) == "execution":
        return [
            {
                "candidate_id": c.id,
                "label": c.execution.pass_rate if c.execution.vacuous is None else 0.0,
            }
            for c in scored
            if c.execution is not None
        ]
    return read_jsonl(labels)


# ----------------------------------------------------------------------------- selection


def select_best(candidates: Sequence[Candidate], cfg: ScoreConfig) -> Partition[Candidate]:
    """The best candidate per seed; every other one with its reason."""
    by_seed: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_seed[c.seed_id].append(c)
    selected: list[Candidate] = []
    rejected: list[Candidate] = []

    def reject(c: Candidate, reason: str, detail: str = "", related: str | None = None) -> None:
        rejected.append(REASONS.drop(c, reason, detail, related))

    for seed_id in sorted(by_seed):
        eligible = []
        for c in by_seed[seed_id]:
            if c.score is None:
                reject(c, "unscored", c.judge.reason if c.judge else "not judged")
            elif cfg.require_pass and not (c.execution and c.execution.trusted_pass):
                why = (
                    c.execution.vacuous
                    if c.execution and c.execution.vacuous
                    else (c.execution.status if c.execution else "not run")
                )
                reject(c, "execution_failed", why)
            elif cfg.min_score is not None and c.score < cfg.min_score:
                reject(c, "below_min_score", f"{c.score:.3f} < {cfg.min_score}")
            else:
                eligible.append(c)
        eligible.sort(
            key=lambda c: (-c.score, -(c.execution.pass_rate if c.execution else 0.0), c.id)
        )
        if eligible:
            best = eligible[0]
            selected.append(best)
            for c in eligible[1:]:
                detail = f"{best.id} scored {best.score:.3f} >= {c.score:.3f}"
                reject(c, "not_best_for_seed", detail, related=best.id)
    return Partition(selected, rejected)


def pick_random_per_seed(candidates: Sequence[Candidate], seed: int) -> Partition[Candidate]:
    """The 'no scorer' ablation: one candidate per seed, chosen at random (reproducibly)."""
    by_seed: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_seed.setdefault(c.seed_id, []).append(c)
    rng = random.Random(seed)
    out: Partition[Candidate] = Partition()
    for _, group in sorted(by_seed.items()):
        group = sorted(group, key=lambda c: c.id)
        chosen = rng.choice(group)
        out.kept.append(chosen)
        out.dropped += [
            REASONS.drop(c, "not_picked", f"{chosen.id} was picked", chosen.id)
            for c in group
            if c is not chosen
        ]
    return out


# ----------------------------------------------------------------------------- calibration


def calibration(candidates: Sequence[Candidate], names: Sequence[str]) -> dict[str, Any]:
    """Per aspect (and the combined score): AUC and point-biserial r against a trusted pass."""
    from scipy.stats import mannwhitneyu, pointbiserialr

    rows = [c for c in candidates if c.score is not None and c.execution is not None]
    passed = np.array([c.execution.trusted_pass for c in rows], dtype=bool)
    out: dict[str, Any] = {"n": len(rows), "passed": int(passed.sum())}
    if len(rows) < 2 or passed.all() or not passed.any():
        out["note"] = "needs both passing and failing scored candidates"
        return out
    columns = {name: np.array([c.judge.values[name] for c in rows], dtype=float) for name in names}
    columns["score"] = np.array([c.score for c in rows], dtype=float)
    for name, values in columns.items():
        u = mannwhitneyu(values[passed], values[~passed], alternative="two-sided").statistic
        auc = float(u / (passed.sum() * (~passed).sum()))
        r = float(pointbiserialr(passed, values).statistic) if np.ptp(values) > 0 else float("nan")
        out[name] = {"auc": round(auc, 4), "point_biserial": None if np.isnan(r) else round(r, 4)}
    return out


# ----------------------------------------------------------------------------- the stage


@dataclass
class ScoreResult:
    scored: list[Candidate] = field(default_factory=list)
    selected: list[Candidate] = field(default_factory=list)
    rejected: list[Candidate] = field(default_factory=list)
    weights: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _weights(config: Config, scored: list[Candidate], fit_labels: str | None) -> dict[str, Any]:
    cfg = config.score
    if fit_labels:
        names = [a.name for a in cfg.aspects] + [EXECUTION_FEATURE]
        if fit_labels != "execution" and not Path(fit_labels).is_file():
            raise ScoderError(f"labels file not found: {fit_labels}")
        info = fit_weights(scored, fit_labels, names, seed=config.random_seed)
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
    judged), kept.jsonl (the best per seed) and dropped.jsonl (the others, with reasons)."""
    cfg = config.score
    run = run or RunDir(config.run_dir)
    candidates_path = candidates_path or run.stage_dir("synthesize") / "kept.jsonl"
    candidates = load_candidates(candidates_path, "synthesize")
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

        def produce(number: int, chunk: Sequence[Candidate]) -> list[Candidate]:
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

        scored: list[Candidate] = []
        resumed = passed = 0
        with track(
            "scoring (execution + judge)", total=len(candidates), unit="candidates"
        ) as progress:
            for _, records, was_resumed in resumable_chunks(
                candidates, cfg.chunk_size, out / "parts", Candidate, produce
            ):
                scored.extend(records)
                resumed += was_resumed
                passed += sum(1 for c in records if c.execution and c.execution.status == "passed")
                progress.advance(len(records), passed=passed)

        weights_info = _weights(config, scored, fit_labels)
        weights = weights_info["weights"]
        scored = [c.model_copy(update={"score": combined_score(c, weights)}) for c in scored]
        best = select_best(scored, cfg)
        selected, rejected = best.kept, best.dropped
        names = [a.name for a in cfg.aspects]
        summary = {
            "weights": weights_info,
            "calibration": calibration(scored, names),
            "per_checkpoint": _per_checkpoint(scored, selected),
            "execution_status": dict(Counter(c.execution.status for c in scored if c.execution)),
            "vacuous_tests": sum(1 for c in scored if c.execution and c.execution.vacuous),
            "unscored_rate": round(sum(c.score is None for c in scored) / len(scored), 4)
            if scored
            else None,
            "judge_methods": dict(Counter(c.judge.method for c in scored if c.judge)),
            "unscored_reasons": dict(
                Counter(
                    (c.judge.reason or "").split(":")[0]
                    for c in scored
                    if c.judge and c.judge.scores is None
                )
            ),
            "mean_aspect_scores": {
                n: round(
                    float(
                        np.mean([c.judge.values[n] for c in scored if c.judge and c.judge.scores])
                    ),
                    3,
                )
                for n in names
                if any(c.judge and c.judge.scores for c in scored)
            },
        }
        write_jsonl(out / "scored.jsonl", scored)
        best.write(out)
        write_json(out / "weights.json", weights_info)
        write_json(out / "summary.json", summary)
        record.counts = {
            "candidates": len(scored),
            "seeds": len({c.seed_id for c in scored}),
            "scored": sum(1 for c in scored if c.score is not None),
            "unscored": sum(1 for c in scored if c.score is None),
            "executed_passed": sum(1 for c in scored if c.execution and c.execution.trusted_pass),
            "selected": len(selected),
            "rejected": len(rejected),
            "rejected_by_reason": dict(Counter(c.drop.reason for c in rejected if c.drop)),
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
    return run, ScoreResult(scored, selected, rejected, weights_info, summary)


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
    candidates = load_candidates(candidates_path, "synthesize")
    stage_fp = fingerprint(
        {"pick": "random", "seed": seed, "candidates": file_digest(candidates_path)}
    )
    with run.stage(STAGE, config=config, fingerprint=stage_fp, force=force) as record:
        picked = pick_random_per_seed(candidates, seed)
        record.counts = picked.write(run.stage_dir(STAGE))
        record.info["scorer"] = "none: a random candidate per seed (ablation)"
    return run, picked


def _per_checkpoint(
    scored: Sequence[Candidate], selected: Sequence[Candidate]
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"candidates": 0, "selected": 0})
    for c in scored:
        out[c.checkpoint]["candidates"] += 1
    for c in selected:
        out[c.checkpoint]["selected"] += 1
    return dict(out)
