"""The typed results the steps of `scoder run` hand forward: small pydantic models, stored in
the ledger as JSON, their paths relative to the run directory."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class SeedPool(BaseModel):
    seeds: str  # the usable seeds, in the order rounds take them
    usable: int
    mined_for: int  # how many seeds the mining asked for


class Seeds(BaseModel):
    seeds: str
    count: int


class Dp(BaseModel):
    train: str
    heldout: str | None
    train_count: int
    heldout_count: int


class Synthesizer(BaseModel):
    checkpoints: list[str]  # oldest first; [] = the base model
    heldout_loss: float | None = None
    heldout_losses: list[float] = []
    losses: list[float] = []  # first and last training loss
    rows: int = 0
    skipped: str | None = None  # why nothing was trained (the previous synthesizer is kept)


class Candidates(BaseModel):
    candidates: str | None  # a stage's kept.jsonl; None when nothing survived
    count: int
    generated: int | None = None  # samples drawn (synthesis only)
    unscored_rate: float | None = None  # candidates the judge gave no scores (scoring only)


class Selection(BaseModel):
    selected: str | None
    count: int
    mean_selected_score: float | None
    baselines: dict[str, str | None]  # baseline name -> its file


class RoundSummary(BaseModel):
    round: int
    sampled_from: list[str]
    generated: int
    parsed: int
    decontaminated: int | None  # None: decontamination off
    best_per_seed: int
    unscored_rate: float | None = None  # of the judged candidates
    selected: int
    selection: str
    mean_selected_score: float | None
    heldout_dp_loss: dict[str, float | None] | None
    diversity: dict[str, float | int]
    trained: Synthesizer


class Quality(BaseModel):
    """A synthesizer's samples on fresh seeds, each executed and judged (`scoder experiment`)."""

    generated: int
    parsed: int
    scored: int = 0  # parsed and not dropped by decontamination
    passed: int = 0  # own tests passed (trusted: the tests test something)
    judge_score: float | None = None  # mean over judged samples of their mean aspect score


class Stop(BaseModel):
    reason: str | None


class Dataset(BaseModel):
    samples: int
    dataset: str | None


class CodeModel(BaseModel):
    model: str
    checkpoints: int


class EvalScore(BaseModel):
    pass_at_k: dict[str, dict[str, float]]
    results: str


class LoopResult(BaseModel):
    rounds: list[RoundSummary]
    stopped: dict[str, Any] | None  # {after_round, reason}
    final: Dataset
    code_model: CodeModel | None = None
    eval: dict[str, EvalScore] = {}
