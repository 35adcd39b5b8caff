"""Config of `scoder experiment`: which selection arms are compared, with how many randomness
seeds, at which budget (scoder.loop.experiment runs it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from scoder.config_scale import Section

# How a round's top-k is chosen (scoder.select.STRATEGIES): influence on D_p (the method), the
# judge's score, RDS+ (representation similarity to D_p), a random draw, a random draw among the
# candidates whose own tests passed, or every candidate (no selection).
SelectionName = Literal["influence", "judge", "rds", "random", "passed_random", "all"]


class ExperimentConfig(Section):
    """Does the selection make better data? One round's pool, sampled, scored and featurized
    once; one synthesizer trained per arm x randomness seed on k of it (+ D_p, as the loop
    does), then each measured: held-out D_p loss, and the next round's samples on the same
    fresh seeds (parse rate, own-test pass rate, judge score; pass@1 of a code model trained
    on the arm's data where code_model.eval_benchmarks is set)."""

    arms: list[SelectionName] = Field(
        default=["influence", "rds", "judge", "random", "passed_random", "all"],
        description="The selection strategies compared, each at the same k (all: k = pool).",
    )
    seeds: list[int] = Field(
        default=[1, 2, 3],
        description="Randomness seeds: each arm trains (and samples, and draws) once per seed.",
    )
    next_seeds: int | None = Field(
        default=None,
        ge=1,
        description="Fresh seeds every arm's synthesizer samples from to measure its output; "
        "none = loop.seeds_per_round.",
    )

    @field_validator("arms", "seeds")
    @classmethod
    def _distinct(cls, value: list) -> list:
        if not value or len(set(value)) != len(value):
            raise ValueError("must be a non-empty list without repeats")
        return value
