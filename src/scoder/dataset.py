"""The final dataset: its rows, its data card, and the upload to the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scoder.config import Config
from scoder.errors import ScoderError
from scoder.models import ModelRef
from scoder.records import Candidate
from scoder.store import write_jsonl

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
        Dataset.from_list(rows).to_parquet(str(where / "dataset.parquet"))
    (where / "README.md").write_text(card)
    return rows


def data_card(
    config: Config,
    ref: ModelRef,
    synthesizer: str | None,
    kept: list[Candidate],
    counts: dict[str, Any],
) -> str:
    """README.md of the final dataset: what it is, where it came from, how it was filtered."""
    final_license = config.final.license or "unknown: set final.license"
    dp = (
        f"route `{config.teacher.route}`, source `{config.teacher.source}`, license "
        f"{config.teacher.license or 'as the source'}"
        if config.loop.enhance
        else "none (the synthesizer was not enhanced)"
    )
    passed = sum(1 for c in kept if c.execution and c.execution.trusted_pass)
    writer = f"LoRA adapter `{synthesizer}`" if synthesizer else "the base model itself"
    return f"""---
license: {config.final.license or "other"}
task_categories: [text-generation]
language: [en]
tags: [code, synthetic, scoder]
---

# Synthetic code-instruction dataset (scoder)

{len(kept)} Python problems with solutions and unit tests, written by a small open model
fine-tuned with the SCoder method (iterative self-distillation) by
[scoder](https://github.com/scoder). Load it with

```python
from datasets import load_dataset
ds = load_dataset("json", data_files="dataset.jsonl", split="train")  # or dataset.parquet
```

## Sources
- Seeds: `{config.seeds.source}` (kind of source per record in `seed_kind`, file in
  `seed_location`).
- D_p (superior samples the synthesizer was first tuned on): {dp}.

## Models
- Base model: `{ref.id}` (weights digest `{ref.digest}`).
- Synthesizer that wrote the dataset: {writer}, after {config.loop.rounds}
  self-distillation round(s) of {config.loop.seeds_per_round} seeds each.
- Template: `{config.synthesis.template}`; sampling: temperature {config.synthesis.temperature},
  top-p {config.synthesis.top_p}, {config.synthesis.max_new_tokens} new tokens at most.

## Filters
- Decontamination against evaluation benchmarks (substring, word {config.decontaminate.ngram}-grams)
  and MinHash near-duplicate removal: {"on" if config.loop.decontaminate else "off"}.
- Execution in a sandbox + multi-aspect judge, best sample per seed: {"on" if config.final.score else "off"}.
- Records whose tests passed in the sandbox: {passed} of {len(kept)} (`tests_passed`).

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
