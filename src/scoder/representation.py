"""RDS+ (Ivison et al., 2025, "Large-Scale Data Selection for Instruction Tuning"): a sample is
represented by the position-weighted mean of the model's final hidden states over its tokens
(weight t for the t-th token, so later tokens, which have read more of the sample, count
more), L2-normalised; candidates are ranked by cosine similarity to the target set, D_p.

The model is the synthesizer checkpoint the candidates were sampled from (no extra embedding
model), and the tokens are those its trainer sees, truncated alike. Only forward passes: about a
third of the cost of a gradient feature per token, and no optimizer state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scoder.config import Config
from scoder.feature_store import cached_features
from scoder.influence import Example
from scoder.models import load_causal_lm, load_tokenizer, resolve_model, swap_adapter
from scoder.records import Candidate
from scoder.store import file_digest, fingerprint, read_jsonl, write_json
from scoder.train import training_examples

VERSION = "rds/1"  # bump when the same tokens would be embedded differently


def sample_tokens(example: Example, max_length: int) -> list[int]:
    """The tokens a sample is embedded on: prompt and response, cut as the trainer cuts them."""
    return (example.prompt_ids + example.response_ids)[:max_length]


def embeddings(
    model: Any,
    examples: Sequence[Example],
    *,
    pad_token_id: int | None,
    max_length: int,
    batch_tokens: int | None = None,
) -> np.ndarray:
    """One L2-normalised RDS+ embedding per example (rows in example order; a sample with no
    token is a row of NaN). Examples are batched by length, right-padded, at most
    `batch_tokens` padded tokens per forward (default: 4,096 on a CPU, 65,536 on CUDA)."""
    import torch

    device = next(model.parameters()).device
    budget = batch_tokens or (65_536 if device.type == "cuda" else 4_096)
    tokens = [sample_tokens(ex, max_length) for ex in examples]
    order = sorted(range(len(tokens)), key=lambda i: (len(tokens[i]), i))
    rows: dict[int, np.ndarray] = {}
    batch: list[int] = []

    def flush() -> None:
        longest = max(len(tokens[i]) for i in batch)
        ids = torch.full((len(batch), longest), pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(tokens[i])] = torch.tensor(tokens[i])
            mask[row, : len(tokens[i])] = 1
        with torch.inference_mode():
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                output_hidden_states=True,
            )
        hidden = out.hidden_states[-1].float()
        weights = (mask.cumsum(dim=1) * mask).to(device).float().unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        for row, i in enumerate(batch):
            rows[i] = pooled[row]
        batch.clear()

    for i in order:
        if not tokens[i]:
            continue
        longest = max([len(tokens[j]) for j in batch] + [len(tokens[i])])
        if batch and longest * (len(batch) + 1) > budget:
            flush()
        batch.append(i)
    if batch:
        flush()
    width = next(iter(rows.values())).shape[0] if rows else 0
    nan = np.full(width, np.nan, np.float32)
    return np.vstack([rows.get(i, nan) for i in range(len(tokens))]).astype(np.float32)


def rds_scores(
    candidates: np.ndarray, targets: np.ndarray, aggregate: Literal["max", "mean"] = "max"
) -> np.ndarray:
    """Each candidate's cosine to the target set: to its nearest target row (max), or to the
    targets' mean (mean). Rows are unit vectors; NaN rows stay NaN."""
    if len(candidates) == 0:
        return np.empty(0, np.float32)
    targets = targets[~np.isnan(targets).any(axis=1)]
    if len(targets) == 0:
        return np.full(len(candidates), np.nan, np.float32)
    if aggregate == "mean":
        centre = targets.mean(axis=0)
        centre = centre / max(float(np.linalg.norm(centre)), 1e-12)
        return (candidates @ centre).astype(np.float32)
    return (candidates @ targets.T).max(axis=1).astype(np.float32)


@dataclass
class Representation:
    """Each candidate's RDS+ similarity to D_p (NaN where it has no token), and its cost."""

    scores: np.ndarray
    checkpoint: str
    features_reused: int
    tokens: int  # forward tokens


def compute_rds(
    config: Config,
    root: Path,
    candidates: Sequence[Candidate],
    candidates_source: str,
    dp_path: Path,
    checkpoint: Path,
) -> Representation:
    """RDS+ embeddings of the candidates and D_p at the synthesizer checkpoint (cached in
    ROOT/features/ like gradient features), then each candidate's cosine to D_p
    (select.rds_aggregate). The model is loaded only when an embedding is missing."""
    cfg = config.select
    ref = resolve_model(config.model.name, revision=config.model.revision)
    tokenizer = load_tokenizer(ref)
    cand_examples = training_examples(
        [c.model_dump() for c in candidates], tokenizer, config, candidates_source
    )
    dp_examples = training_examples(read_jsonl(dp_path), tokenizer, config, str(dp_path))
    max_length = cfg.max_length or config.train.max_length
    spec = {"kind": "rds+", "max_length": max_length, "version": VERSION}
    digest = file_digest(checkpoint / "adapter_model.safetensors").split(":")[-1][:16]
    store = root / "features" / digest / fingerprint(spec)
    store.mkdir(parents=True, exist_ok=True)
    write_json(store / "spec.json", {**spec, "checkpoint": str(checkpoint)})
    loaded: list[Any] = []

    def embed(examples: list[Example]) -> np.ndarray:
        if not loaded:
            model = load_causal_lm(ref, device=config.model.device, dtype=config.model.dtype)
            loaded.append(swap_adapter(model, checkpoint, trainable=False))
        return embeddings(
            loaded[0], examples, pad_token_id=tokenizer.pad_token_id, max_length=max_length
        )

    found = []
    for name, examples in (("candidates", cand_examples), ("dp", dp_examples)):
        found.append(
            cached_features(
                store / name,
                examples,
                embed,
                chunk_rows=cfg.chunk_rows,
                description=f"RDS+ embeddings: {name} at {checkpoint.name}",
            )
        )
    (cand, cand_reused), (dp, dp_reused) = found
    tokens = sum(len(sample_tokens(ex, max_length)) for ex in cand_examples + dp_examples)
    scores = rds_scores(cand, dp, cfg.rds_aggregate)
    return Representation(scores, str(checkpoint), cand_reused + dp_reused, tokens)
