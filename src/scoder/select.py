"""`scoder select`: keep k candidates by a selection strategy; the method's is gradient influence.

Selection strategies are functions of one shape, chosen by name (`loop.selection`): the
candidates, k and a random seed in, the candidates in the order the strategy ranks them out (the
first k are kept). `influence` ranks by the candidates' influence on D_p, `judge` by their
weighted judge score, `random` draws k at random. Beside the kept set the stage writes the
budget-matched baselines random@k and judge-top@k, so every selection can be compared.

Influence, for each synthesizer checkpoint k: candidates' LoRA gradients, Adam-preconditioned with
that checkpoint's optimizer state, and D_p's plain gradients, both projected and normalised
(scoder.influence). Influence(z) = sum_k lr_k * mean_{z' in D_p} cos(...). Features are stored
per checkpoint as numpy arrays keyed by a hash of each sample's text, and reused when neither the
text nor the checkpoint changed.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scoder.checkpoints import check_checkpoint, read_checkpoint
from scoder.config import Config, SelectionName
from scoder.errors import ScoderError
from scoder.filters import DropReasons, Partition
from scoder.influence import gradient_features, influence_scores
from scoder.models import load_causal_lm, load_tokenizer, resolve_model
from scoder.records import Candidate, load_candidates
from scoder.store import (
    RunDir,
    atomic_write_bytes,
    file_digest,
    fingerprint,
    read_jsonl,
    write_json,
    write_jsonl,
)
from scoder.train import build_examples

STAGE = "select"
VERSION = "select/1"  # bump when the same inputs would select other candidates
SelectDrop = Literal["influence_undefined", "below_top_k"]
REASONS = DropReasons(STAGE, SelectDrop)


# --- selection strategies ------------------------------------------------------------------------

Strategy = Callable[[Sequence[Candidate], int, int], list[Candidate]]


def influence_top_k(candidates: Sequence[Candidate], k: int, seed: int) -> list[Candidate]:
    """Highest influence on D_p first (ties by id)."""
    return sorted(candidates, key=lambda c: (-_defined(c.influence), c.id))


def judge_top_k(candidates: Sequence[Candidate], k: int, seed: int) -> list[Candidate]:
    """Highest weighted judge score first (unscored last, ties by id): judge-top@k."""
    return sorted(candidates, key=lambda c: (-_defined(c.score), c.id))


def random_k(candidates: Sequence[Candidate], k: int, seed: int) -> list[Candidate]:
    """k drawn at random without replacement (in input order), then the rest: random@k."""
    rng = np.random.default_rng(seed)
    k = min(k, len(candidates))
    drawn = sorted(rng.choice(len(candidates), size=k, replace=False).tolist()) if k else []
    chosen = set(drawn)
    return [candidates[i] for i in drawn] + [c for i, c in enumerate(candidates) if i not in chosen]


def _defined(value: float | None) -> float:
    return value if value is not None else -np.inf


STRATEGIES: dict[SelectionName, Strategy] = {
    "influence": influence_top_k,
    "judge": judge_top_k,
    "random": random_k,
}
# The budget-matched comparison sets written beside every selection: file name -> strategy.
BASELINES: dict[str, SelectionName] = {"random_at_k": "random", "judge_top_at_k": "judge"}


def choose(
    strategy: SelectionName, candidates: Sequence[Candidate], k: int, seed: int
) -> Partition[Candidate]:
    """The first k of the strategy's ranking kept, the rest dropped with their rank."""
    ranked = STRATEGIES[strategy](candidates, k, seed)
    out: Partition[Candidate] = Partition(ranked[:k])
    for rank, c in enumerate(ranked[k:], start=k + 1):
        detail = "not drawn" if strategy == "random" else f"rank {rank} > k={k}"
        out.dropped.append(REASONS.drop(c, "below_top_k", f"{detail} ({strategy})"))
    return out


# --- influence -------------------------------------------------------------------------------------


def training_records(
    rows: list[dict[str, Any]], tokenizer: Any, template_id: str, source: str
) -> list[dict[str, str]]:
    """The synthesizer's training samples exactly as `scoder train` builds them, as text."""
    return [
        {
            "prompt": tokenizer.apply_chat_template(
                ex["prompt"], tokenize=False, add_generation_prompt=True
            ),
            "response": ex["completion"][0]["content"],
        }
        for ex in build_examples(rows, "synthesizer", template_id, source)
    ]


def _text_key(record: dict[str, str]) -> str:
    return hashlib.sha256((record["prompt"] + "\0" + record["response"]).encode()).hexdigest()[:24]


def cached_features(
    store: Path, records: list[dict[str, str]], compute: Any, *, tag: str = "part"
) -> tuple[np.ndarray, int]:
    """Features for records, computing only those whose text no part file in `store` holds.

    Each computation is saved as a new part (`<tag>-<hash>.npy` + `.json` index, the index
    written last), so parts from shards run elsewhere can simply be copied in. Returns the
    features in record order and how many rows were reused.
    """
    keys = [_text_key(r) for r in records]
    known: dict[str, tuple[np.ndarray, int]] = {}
    for index_file in sorted(store.glob("*.json")):
        array_file = index_file.with_suffix(".npy")
        if not array_file.is_file():
            continue
        array = np.load(array_file, mmap_mode="r")
        for row, key in enumerate(json.loads(index_file.read_text())):
            known.setdefault(key, (array, row))
    missing = list(dict.fromkeys(k for k in keys if k not in known))
    if missing:
        position = {k: keys.index(k) for k in missing}
        fresh = compute([records[position[k]] for k in missing])
        part = store / f"{tag}-{hashlib.sha256(''.join(missing).encode()).hexdigest()[:12]}"
        buffer = io.BytesIO()
        np.save(buffer, fresh.astype(np.float32))
        atomic_write_bytes(part.with_suffix(".npy"), buffer.getvalue())
        atomic_write_bytes(part.with_suffix(".json"), json.dumps(missing).encode())
        for row, key in enumerate(missing):
            known[key] = (fresh, row)
    reused = sum(1 for k in keys if k not in missing)
    if not keys:
        return np.empty((0, 0), np.float32), 0
    return np.vstack([np.asarray(known[k][0][known[k][1]]) for k in keys]).astype(
        np.float32
    ), reused


def _adapter_info(path: Path) -> dict[str, Any]:
    config = json.loads((path / "adapter_config.json").read_text())
    return {
        key: config.get(key)
        for key in ("r", "lora_alpha", "target_modules", "base_model_name_or_path")
    }


@dataclass
class Influence:
    """Each candidate's influence on D_p (NaN where undefined), and how it was computed."""

    scores: np.ndarray
    checkpoints: list[dict[str, Any]]
    features_reused: int
    truncated: list[str]  # ids of candidates longer than select.max_length (kept, flagged)


def compute_influence(
    config: Config,
    run: RunDir,
    candidates: list[Candidate],
    candidates_source: str,
    dp_path: Path,
    checkpoints: Sequence[Path],
    *,
    shard_tag: str = "part",
) -> Influence:
    """Gradient features of the candidates and D_p at every checkpoint (cached in RUN/features/),
    summed into influence scores."""
    cfg = config.select
    ref = resolve_model(config.model.name, revision=config.model.revision)
    tokenizer = load_tokenizer(ref)
    template = config.synthesis.template
    cand_records = training_records(
        [c.model_dump() for c in candidates], tokenizer, template, candidates_source
    )
    dp_records = training_records(read_jsonl(dp_path), tokenizer, template, str(dp_path))
    spec = dict(
        projection_dim=cfg.projection_dim,
        seed=cfg.projection_seed,
        batch_tokens=cfg.batch_tokens,
        max_length=cfg.max_length,
    )
    cand_feats, dp_feats, lrs, info, reused = [], [], [], [], 0
    for path in checkpoints:
        model = load_causal_lm(
            ref,
            device=config.model.device,
            dtype=config.model.dtype,
            adapter=path,
            trainable=True,  # gradients of the adapter: what influence is made of
        )
        ckpt = read_checkpoint(path, model, missing_state=cfg.missing_optimizer_state)
        # Features depend only on (checkpoint, projection, text): one store per checkpoint and
        # projection, shared by every select run and shard in this run directory.
        digest = file_digest(Path(path) / "adapter_model.safetensors")
        store = run.path / "features" / digest.split(":")[-1][:16] / fingerprint(spec)
        store.mkdir(parents=True, exist_ok=True)
        write_json(
            store / "spec.json",
            {**spec, "kind": "srht", "checkpoint": str(path), "adapter": _adapter_info(path)},
        )
        state = ckpt.optimizer_state
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if state is not None and cfg.missing_optimizer_state == "plain" and set(state) != trainable:
            state = None  # recorded below as adam_preconditioned: false

        def features_with(optimizer_state, model=model):
            return lambda records: gradient_features(
                model, tokenizer, records, optimizer_state=optimizer_state, **spec
            ).numpy()

        kind = "adam" if state else "plain"
        c, n_reused = cached_features(
            store / f"candidates-{kind}", cand_records, features_with(state), tag=shard_tag
        )
        d, m_reused = cached_features(
            store / "dp-plain", dp_records, features_with(None), tag=shard_tag
        )
        reused += n_reused + m_reused
        cand_feats.append(c)
        dp_feats.append(d)
        lrs.append(ckpt.mean_lr)
        info.append(
            {
                "path": str(path),
                "mean_lr": ckpt.mean_lr,
                "step": ckpt.step,
                "adam_preconditioned": state is not None,
            }
        )
    truncated = [
        c.id
        for c, r in zip(candidates, cand_records)
        if len(tokenizer(r["prompt"] + r["response"], add_special_tokens=False)["input_ids"]) + 1
        > cfg.max_length
    ]
    return Influence(influence_scores(cand_feats, dp_feats, lrs), info, reused, truncated)


# --- the stage -------------------------------------------------------------------------------------


@dataclass
class SelectResult:
    kept: list[Candidate] = field(default_factory=list)
    dropped: list[Candidate] = field(default_factory=list)
    baselines: dict[str, list[Candidate]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def run_select(
    config: Config,
    candidates_path: Path | None = None,
    *,
    strategy: SelectionName = "influence",
    dp: Path | None = None,
    checkpoints: Sequence[Path] = (),
    k: int | None = None,
    seed: int | None = None,
    run: RunDir | None = None,
    shard: tuple[int, int] | None = None,
    force: bool = False,
) -> tuple[RunDir, SelectResult]:
    """Keep k candidates by `strategy` into RUN/select/ (kept.jsonl, dropped.jsonl,
    baselines/random_at_k.jsonl and judge_top_at_k.jsonl, summary.json).

    Influence needs the D_p file `dp` and the synthesizer `checkpoints`. k defaults to
    select.k, else select.fraction of the candidates; `seed` (default random_seed) draws
    random@k. With `shard=(i, n)` only the features of every n-th candidate (starting at the
    i-th, 1-based) are computed into RUN/features/, for a later full run to reuse.
    """
    cfg = config.select
    run = run or RunDir(config.run_dir)
    seed = config.random_seed if seed is None else seed
    candidates_path = candidates_path or run.stage_dir("score") / "kept.jsonl"
    candidates = load_candidates(candidates_path, "score")
    needs_influence = strategy == "influence" or shard is not None
    problems = []
    if needs_influence and (dp is None or not Path(dp).is_file()):
        problems.append(f"the D_p file (JSONL) is needed for influence; got {dp}")
    if needs_influence and not checkpoints:
        problems.append("name the synthesizer checkpoints to estimate influence with")
    if problems:
        raise ScoderError("select: " + "; ".join(problems))
    checkpoints = [check_checkpoint(p) for p in checkpoints] if needs_influence else []
    if shard is not None:
        index, count = shard
        if not 1 <= index <= count:
            raise ScoderError(
                f"--shard {index}/{count}: the shard number must be between 1 and {count}"
            )
        candidates = candidates[index - 1 :: count]
    if needs_influence and not read_jsonl(dp):
        raise ScoderError(f"select: the D_p file {dp} holds no samples")
    ref = resolve_model(config.model.name, revision=config.model.revision)
    stage_fp = fingerprint(
        {
            "select": cfg.model_dump(mode="json"),
            "strategy": strategy,
            "k": k,
            "seed": seed,
            "model": ref.digest if needs_influence else None,
            "checkpoints": [file_digest(p / "adapter_model.safetensors") for p in checkpoints],
            "candidates": file_digest(candidates_path),
            "dp": file_digest(dp) if needs_influence else None,
            "version": VERSION,
        }
    )
    stage = STAGE if shard is None else f"{STAGE}-shard-{shard[0]}-of-{shard[1]}"
    with run.stage(stage, config=config, fingerprint=stage_fp, force=force) as record:
        out = run.stage_dir(stage)
        pool = Partition(list(candidates))
        influence = None
        if needs_influence:
            tag = "part" if shard is None else f"shard-{shard[0]}-of-{shard[1]}"
            influence = compute_influence(
                config, run, candidates, str(candidates_path), Path(dp), checkpoints, shard_tag=tag
            )
            record.info.update(
                {"checkpoints": influence.checkpoints, "truncated_candidates": influence.truncated}
            )
            if shard is not None:
                record.counts = {
                    "candidates": len(candidates),
                    "features_reused": influence.features_reused,
                }
                return run, SelectResult(
                    summary={"shard": list(shard), "candidates": len(pool.kept)}
                )
            pool = _with_influence(candidates, influence.scores)
        k = k or cfg.k or max(1, round(cfg.fraction * len(pool.kept)))
        chosen = choose(strategy, pool.kept, k, seed)
        kept = chosen.kept
        dropped = pool.dropped + chosen.dropped
        baselines = {
            name: choose(base, pool.kept, k, seed).kept for name, base in BASELINES.items()
        }
        counts = Partition(kept, dropped).write(out)
        for name, chosen_set in baselines.items():
            write_jsonl(out / "baselines" / f"{name}.jsonl", chosen_set)
        record.counts = {
            "candidates": len(candidates),
            "strategy": strategy,
            "selected": counts["kept"],
            "rejected_by_reason": counts["dropped_by_reason"],
        }
        summary: dict[str, Any] = {
            "strategy": strategy,
            "k": k,
            "overlap_with_judge_top_at_k": len(
                {c.id for c in kept} & {c.id for c in baselines["judge_top_at_k"]}
            ),
        }
        if influence is not None:
            record.counts.update(
                features_reused=influence.features_reused, truncated=len(influence.truncated)
            )
            record.info["projection"] = {
                "dim": cfg.projection_dim,
                "seed": cfg.projection_seed,
                "kind": "srht",
            }
            summary["checkpoints"] = influence.checkpoints
        write_json(out / "summary.json", summary)
    return run, SelectResult(kept, dropped, baselines, summary)


def _with_influence(candidates: list[Candidate], scores: np.ndarray) -> Partition[Candidate]:
    """Candidates with their influence; those whose gradient is undefined dropped."""
    out: Partition[Candidate] = Partition()
    for c, value in zip(candidates, scores):
        if np.isnan(value):
            why = "gradient undefined (no response tokens or not finite)"
            out.dropped.append(REASONS.drop(c, "influence_undefined", why))
        else:
            out.kept.append(c.model_copy(update={"influence": float(value)}))
    return out
