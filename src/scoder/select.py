"""`scoder select`: keep the candidates whose training gradient points where D_p's does.

For each synthesizer checkpoint k: candidates' LoRA gradients, Adam-preconditioned with that
checkpoint's optimizer state, and D_p's plain gradients, both projected and normalised
(scoder.influence). Influence(z) = sum_k lr_k * mean_{z' in D_p} cos(...). The top-k candidates are
kept; beside them the same run writes the budget-matched baselines random@k and judge-top@k, so
every selection can be compared. Features are stored per checkpoint as numpy arrays keyed by a
hash of each sample's text, and reused when neither the text nor the checkpoint changed.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from scoder.config import Config, fingerprint
from scoder.errors import ScoderError
from scoder.records import Candidate, Drop, load_candidates
from scoder.store import (
    RunDir,
    atomic_write_bytes,
    file_digest,
    read_jsonl,
    write_json,
    write_jsonl,
)

STAGE = "select"


def training_records(
    rows: list[dict[str, Any]], tokenizer: Any, template_id: str, source: str
) -> list[dict[str, str]]:
    """The synthesizer's training samples exactly as `scoder train` builds them, as text."""
    from scoder.train import build_examples

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


def select_top_k(
    candidates: list[Candidate], influence: np.ndarray, reasons: dict[int, str], k: int, seed: int
) -> dict[str, list[Candidate]]:
    """Top-k by influence, plus random@k and judge-top@k over the same candidates."""
    scored = [
        c.model_copy(update={"influence": None if i in reasons else float(influence[i])})
        for i, c in enumerate(candidates)
    ]
    valid = [i for i in range(len(scored)) if i not in reasons]
    k = min(k, len(valid))
    order = sorted(valid, key=lambda i: (-influence[i], scored[i].id))
    top = set(order[:k])
    rejected = []
    for i, c in enumerate(scored):
        if i in reasons:
            rejected.append(
                c.model_copy(
                    update={
                        "drop": Drop(stage=STAGE, reason="influence_undefined", detail=reasons[i])
                    }
                )
            )
        elif i not in top:
            rejected.append(
                c.model_copy(
                    update={
                        "drop": Drop(
                            stage=STAGE,
                            reason="below_top_k",
                            detail=f"rank {order.index(i) + 1} > k={k}",
                        )
                    }
                )
            )
    rng = np.random.default_rng(seed)
    random_k = sorted(rng.choice(valid, size=k, replace=False).tolist()) if k else []
    judge_order = sorted(
        valid,
        key=lambda i: (
            -(scored[i].score if scored[i].score is not None else -np.inf),
            scored[i].id,
        ),
    )
    return {
        "selected": [scored[i] for i in order[:k]],
        "rejected": rejected,
        "random_at_k": [scored[i] for i in random_k],
        "judge_top_at_k": [scored[i] for i in judge_order[:k]],
    }


def _adapter_info(path: Path) -> dict[str, Any]:
    config = json.loads((path / "adapter_config.json").read_text())
    return {
        key: config.get(key)
        for key in ("r", "lora_alpha", "target_modules", "base_model_name_or_path")
    }


def run_select(
    config: Config,
    candidates_path: Path | None = None,
    *,
    force: bool = False,
    shard: tuple[int, int] | None = None,
) -> tuple[RunDir, dict[str, Any]]:
    """Influence-based selection; with `shard=(i, n)` only the features of every n-th candidate
    (starting at the i-th, 1-based) are computed into RUN/features/, for a later full run to reuse.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scoder.checkpoints import load_checkpoint
    from scoder.influence import gradient_features, influence_scores
    from scoder.models import resolve_model
    from scoder.models.hf import pick_device, pick_dtype

    cfg = config.select
    run = RunDir(config.run_dir)
    candidates_path = candidates_path or run.stage_dir("score") / "selected.jsonl"
    candidates = load_candidates(candidates_path, "score")
    if cfg.dp is None or not Path(cfg.dp).is_file():
        raise ScoderError(f"select.dp must name the D_p file (JSONL); got {cfg.dp}")
    if not cfg.checkpoints:
        raise ScoderError(
            "select.checkpoints is empty: name the synthesizer checkpoints to estimate influence with"
        )
    if shard is not None:
        index, count = shard
        if not 1 <= index <= count:
            raise ScoderError(
                f"--shard {index}/{count}: the shard number must be between 1 and {count}"
            )
        candidates = candidates[index - 1 :: count]
    dp_rows = read_jsonl(cfg.dp)
    if not candidates or not dp_rows:
        raise ScoderError("select needs at least one candidate and one D_p sample")

    ref = resolve_model(config.model.name, revision=config.model.revision)
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    cand_records = training_records(
        [c.model_dump() for c in candidates],
        tokenizer,
        config.synthesis.template,
        str(candidates_path),
    )
    dp_records = training_records(dp_rows, tokenizer, config.synthesis.template, str(cfg.dp))
    device = pick_device(config.model.device)
    dtype = pick_dtype(config.model.dtype, device)
    ckpt_digests = {
        str(p): file_digest(Path(p) / "adapter_model.safetensors") for p in cfg.checkpoints
    }
    stage_fp = fingerprint(
        {
            "select": cfg.model_dump(mode="json"),
            "model": ref.digest,
            "checkpoints": ckpt_digests,
            "candidates": file_digest(candidates_path),
            "dp": file_digest(cfg.dp),
            "random_seed": config.random_seed,
        }
    )
    stage = STAGE if shard is None else f"{STAGE}-shard-{shard[0]}-of-{shard[1]}"
    with run.stage(stage, config=config, fingerprint=stage_fp, force=force) as record:
        out = run.stage_dir(stage)
        cand_feats, dp_feats, lrs, info, reused = [], [], [], [], 0
        spec = dict(
            projection_dim=cfg.projection_dim,
            seed=cfg.projection_seed,
            batch_tokens=cfg.batch_tokens,
            max_length=cfg.max_length,
        )
        for path in cfg.checkpoints:
            base = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype).to(device)
            model, ckpt = load_checkpoint(path, base, missing_state=cfg.missing_optimizer_state)
            model.eval()
            # Features depend only on (checkpoint, projection, text): one store per checkpoint
            # and projection, shared by every select run and shard in this run directory.
            store = (
                run.path
                / "features"
                / ckpt_digests[str(path)].split(":")[-1][:16]
                / fingerprint(spec)
            )
            store.mkdir(parents=True, exist_ok=True)
            write_json(
                store / "spec.json",
                {
                    **spec,
                    "kind": "srht",
                    "checkpoint": str(path),
                    "adapter": _adapter_info(Path(path)),
                },
            )
            state = ckpt.optimizer_state
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            if (
                state is not None
                and cfg.missing_optimizer_state == "plain"
                and set(state) != trainable
            ):
                state = None  # recorded below as adam_preconditioned: false

            def features_with(optimizer_state, model=model):
                return lambda records: gradient_features(
                    model, tokenizer, records, optimizer_state=optimizer_state, **spec
                ).numpy()

            kind = "adam" if state else "plain"
            tag = "part" if shard is None else f"shard-{shard[0]}-of-{shard[1]}"
            c, n_reused = cached_features(
                store / f"candidates-{kind}", cand_records, features_with(state), tag=tag
            )
            d, m_reused = cached_features(
                store / "dp-plain", dp_records, features_with(None), tag=tag
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
            if len(tokenizer(r["prompt"] + r["response"], add_special_tokens=False)["input_ids"])
            + 1
            > cfg.max_length
        ]
        record.info.update(
            {"checkpoints": info, "truncated_candidates": truncated}
        )  # kept, flagged
        if shard is not None:
            record.counts = {
                "candidates": len(candidates),
                "dp": len(dp_rows),
                "features_reused": reused,
            }
            return run, {"summary": {"shard": list(shard), "candidates": len(candidates)}}
        influence = influence_scores(cand_feats, dp_feats, lrs)
        reasons = {
            i: "gradient undefined (no response tokens or not finite)"
            for i in range(len(candidates))
            if np.isnan(influence[i])
        }
        k = cfg.k or max(1, round(cfg.fraction * (len(candidates) - len(reasons))))
        sets = select_top_k(candidates, influence, reasons, k, config.random_seed)
        write_jsonl(out / "selected.jsonl", sets["selected"])
        write_jsonl(out / "rejected.jsonl", sets["rejected"])
        write_jsonl(out / "baselines" / "random_at_k.jsonl", sets["random_at_k"])
        write_jsonl(out / "baselines" / "judge_top_at_k.jsonl", sets["judge_top_at_k"])
        record.counts = {
            "candidates": len(candidates),
            "dp": len(dp_rows),
            "selected": len(sets["selected"]),
            "rejected_by_reason": dict(Counter(c.drop.reason for c in sets["rejected"] if c.drop)),
            "features_reused": reused,
            "truncated": len(truncated),
        }
        record.info.update(
            {
                "projection": {
                    "dim": cfg.projection_dim,
                    "seed": cfg.projection_seed,
                    "kind": "srht",
                },
            }
        )
        summary = {
            "k": k,
            "checkpoints": info,
            "overlap_with_judge_top_at_k": len(
                {c.id for c in sets["selected"]} & {c.id for c in sets["judge_top_at_k"]}
            ),
        }
        write_json(out / "summary.json", summary)
    return run, {**sets, "summary": summary}
