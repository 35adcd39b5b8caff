"""What RUN/experiment.json (`scoder experiment`, version "experiment/1") says, read back into
typed values: the design, each arm x seed's measurements, each arm's spread over seeds, its cost,
and how it compares to random@k.

Read leniently (keys this reader does not know are kept, values it does not need may be missing),
and never fatally: a file that cannot be read is a sentence saying why, for the page to show.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

FILE = "experiment.json"
VERSION = "experiment/1"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Design(_Lenient):
    arms: list[str]
    seeds: list[int] = []
    k: int | None = None
    pool: int | None = None
    next_seeds: int | None = None
    heldout_dp: int | None = None
    model: str | None = None


class Metric(_Lenient):
    label: str
    better: Literal["lower", "higher"]


class ArmSeedRun(_Lenient):
    """One arm trained with one randomness seed, and what it measured."""

    arm: str
    seed: int
    selected: int | None = None
    metrics: dict[str, float | None] = {}
    files: dict[str, Any] = {}


class Spread(_Lenient):
    """A metric over an arm's seeds (std is null for a single seed)."""

    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    n: int = 0
    values: list[float | None] = []


class Cost(_Lenient):
    seconds: float | None = None
    tokens: int | None = None
    what: str = ""


class Arm(_Lenient):
    metrics: dict[str, Spread] = {}
    cost: Cost = Cost()
    # metric -> "better" | "worse" | "within spread"; null for the random arm itself
    versus_random: dict[str, str | None] | None = None


class ExperimentFacts(_Lenient):
    version: Literal["experiment/1"]
    design: Design
    shared: dict[str, Any] = {}
    metrics: dict[str, Metric]
    runs: list[ArmSeedRun] = []
    arms: dict[str, Arm] = {}
    findings: list[str] = []

    def arm_order(self) -> list[str]:
        """The design's arms in its order, then any other arm the file has results for."""
        order = list(self.design.arms)
        for name in [*self.arms, *(r.arm for r in self.runs)]:
            if name not in order:
                order.append(name)
        return order

    def values(self, arm: str, metric: str) -> list[tuple[int | None, float]]:
        """(seed, value) of each of the arm's runs that measured the metric; the arm's summary
        values (without their seeds) where no run lists one."""
        found: list[tuple[int | None, float]] = [
            (r.seed, float(v))
            for r in self.runs
            if r.arm == arm and (v := r.metrics.get(metric)) is not None
        ]
        if not found and (spread := self.spread(arm, metric)):
            found = [(None, float(v)) for v in spread.values if v is not None]
        return found

    def spread(self, arm: str, metric: str) -> Spread | None:
        """The arm's summary of the metric, as the file states it."""
        summary = self.arms.get(arm)
        return summary.metrics.get(metric) if summary else None

    def mean_std(self, arm: str, metric: str) -> tuple[float | None, float | None]:
        """Mean and std over seeds: the file's summary, or (where it has none) from the runs."""
        spread = self.spread(arm, metric)
        if spread is not None and spread.mean is not None:
            return spread.mean, spread.std
        points = [v for _, v in self.values(arm, metric)]
        if not points:
            return None, None
        return statistics.fmean(points), statistics.stdev(points) if len(points) > 1 else None

    def verdict(self, arm: str, metric: str) -> str | None:
        """ "better", "worse" or "within spread" against random@k, where the file says."""
        summary = self.arms.get(arm)
        return (summary.versus_random or {}).get(metric) if summary else None

    def measured(self) -> list[str]:
        """The metrics (in the file's order) that some arm has a value of."""
        return [
            m
            for m in self.metrics
            if any(self.mean_std(arm, m)[0] is not None for arm in self.arm_order())
        ]


def _why(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in exc.errors()[:3]
    ]
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def read_experiment(run_dir: Path) -> ExperimentFacts | str | None:
    """RUN/experiment.json read and checked: None where the run has none, and a one-line
    reason (naming the file) where it cannot be read."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path} could not be read: {exc}"
    except json.JSONDecodeError as exc:
        return f"{path} could not be read: it is not JSON ({exc})"
    if isinstance(data, dict) and data.get("version") != VERSION:
        return (
            f"{path} could not be read: its version is {data.get('version')!r}, this report "
            f"reads {VERSION!r}"
        )
    try:
        return ExperimentFacts.model_validate(data)
    except ValidationError as exc:
        return f"{path} could not be read: {_why(exc)}"
