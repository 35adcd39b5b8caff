"""The records that flow between stages.

Every record keeps where it came from; every record a stage drops keeps the stage and the reason.
Fields are fixed (missing values are null), so each JSONL file has one schema and loads with
`datasets.load_dataset("json", ...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scoder.errors import ScoderError
from scoder.store import read_jsonl


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Drop(_Record):
    """Why a stage did not keep an item. Each stage declares its reasons (scoder.filters)."""

    stage: str
    reason: str
    detail: str = ""
    # what the drop points at: the benchmark task a record copies ("humaneval:HumanEval/12"),
    # the kept record it duplicates, the better candidate of its seed
    related: str | None = None


class SeedSource(_Record):
    """Where a seed snippet was found: a file span, or a row of a dataset/file."""

    kind: Literal["stdlib", "dir", "file", "hf"]
    location: str  # file path (relative to the source root) or dataset name
    line_start: int | None = None
    line_end: int | None = None
    row: int | None = None
    name: str | None = None  # function/class name when the seed is a definition


class Seed(_Record):
    id: str
    text: str
    language: str = "python"
    source: SeedSource
    drop: Drop | None = None


class Execution(_Record):
    """The solution run against its own tests in the sandbox."""

    status: str  # passed / failed / error / timeout / memory / killed
    tests_total: int
    tests_passed: int
    pass_rate: float
    # Read from older runs, never written: a timing would make the same selection differ in
    # bytes between runs (the stage's manifest has the execution time).
    wall_s: float | None = Field(default=None, exclude=True)
    isolation: str
    detail: str = ""
    stderr: str = ""
    vacuous: str | None = None  # why the tests prove nothing (then a pass is not trusted)

    @property
    def trusted_pass(self) -> bool:
        return self.status == "passed" and self.vacuous is None


class Judgement(_Record):
    """A judge's integer scores per aspect, or why there are none."""

    scores: dict[str, int] | None = None
    # the expected score per aspect over the judge's probabilities of the digits 0-9 (G-Eval),
    # where the backend gives them: what the weighted score uses, for its resolution
    expected: dict[str, float] | None = None
    method: Literal["choices", "logprobs", "text"] | None = None  # how the scores were read
    reason: str | None = None  # why unscored, after the retry
    attempts: int = 1
    raw: list[str] = []

    @property
    def values(self) -> dict[str, float] | None:
        """The scores the weighted score is made of: expected values when there are any."""
        if self.expected is not None:
            return self.expected
        return {k: float(v) for k, v in self.scores.items()} if self.scores is not None else None


class DpSample(_Record):
    """A superior sample of D_p: what the synthesizer should learn to write."""

    id: str
    seed_text: str
    problem: str
    solution: str
    tests: str | None = None
    route: Literal["generate", "import", "derive"]
    source: str  # file, dataset or model it came from
    row: int | None = None
    model: str | None = None  # the teacher model, for generated samples
    license: str | None = None
    drop: Drop | None = None


class Candidate(_Record):
    """One synthesis sample: seed snippet -> (problem, solution, tests), with its provenance."""

    id: str
    seed_id: str
    seed_text: str
    seed_source: SeedSource
    round: int = 0
    checkpoint: str = "base"
    sample_index: int = 0
    model: str
    model_digest: str
    template: str
    template_digest: str
    sampling: dict[str, Any]
    raw_output: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    problem: str | None = None
    solution: str | None = None
    tests: str | None = None
    # filled by the score stage
    execution: Execution | None = None
    judge: Judgement | None = None
    score: float | None = None
    influence: float | None = None  # filled by the select stage
    drop: Drop | None = None


def load_candidates(path: Path, made_by: str) -> list[Candidate]:
    """The kept candidates of a stage's output file, or one clear error."""
    if not path.is_file():
        raise ScoderError(
            f"no candidates at {path}: run `scoder {made_by}` first or pass --candidates FILE"
        )
    candidates = [c for c in read_jsonl(path, Candidate) if c.drop is None]
    if not candidates:
        raise ScoderError(f"{path} holds no kept candidates")
    return candidates
