"""One way to keep and drop, in the spirit of datatrove's filters and exclusion writer.

A filtering stage declares the reasons it may drop a record for, once (`DropReasons`, built from a
`Literal`); it marks each record it does not keep with `reasons.drop(record, reason, detail)`,
which stamps the record's `drop` field with the stage, the reason and what the drop is about. A
`Partition` splits records into kept and dropped and writes them as `kept.jsonl` and
`dropped.jsonl` in the stage's directory, with the counts by reason for the manifest: the same
files, the same counts, in every stage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, get_args

from scoder.records import Candidate, DpSample, Drop, Seed
from scoder.store import write_jsonl

KEPT = "kept.jsonl"
DROPPED = "dropped.jsonl"

R = TypeVar("R", Seed, DpSample, Candidate)


class DropReasons:
    """The reasons one stage may drop a record for; any other reason is a bug in that stage."""

    def __init__(self, stage: str, reasons: Any) -> None:
        self.stage = stage
        self.reasons: tuple[str, ...] = get_args(reasons)
        if not self.reasons:
            raise TypeError(f"{stage}: declare the drop reasons as a Literal of strings")

    def make(self, reason: str, detail: str = "", related: str | None = None) -> Drop:
        if reason not in self.reasons:
            raise ValueError(
                f"stage {self.stage!r} has no drop reason {reason!r} (declared: "
                f"{', '.join(self.reasons)})"
            )
        return Drop(stage=self.stage, reason=reason, detail=detail, related=related)

    def drop(self, record: R, reason: str, detail: str = "", related: str | None = None) -> R:
        """A copy of `record` marked as dropped by this stage."""
        return record.model_copy(update={"drop": self.make(reason, detail, related)})


@dataclass
class Partition(Generic[R]):
    """What a filtering stage kept, and what it dropped (each with its `drop`)."""

    kept: list[R] = field(default_factory=list)
    dropped: list[R] = field(default_factory=list)

    def __iter__(self) -> Iterator[list[R]]:
        """`kept, dropped = partition`."""
        return iter((self.kept, self.dropped))

    @classmethod
    def of(cls, records: Iterable[R]) -> Partition[R]:
        out: Partition[R] = cls()
        for record in records:
            (out.kept if record.drop is None else out.dropped).append(record)
        return out

    def counts(self) -> dict[str, Any]:
        return {
            "kept": len(self.kept),
            "dropped": len(self.dropped),
            "dropped_by_reason": dict(
                Counter(r.drop.reason for r in self.dropped if r.drop is not None)
            ),
        }

    def write(self, directory: Path) -> dict[str, Any]:
        """kept.jsonl and dropped.jsonl in `directory`; returns the counts."""
        return write_partition(directory, self.kept, self.dropped)


def write_partition(directory: Path, kept: Iterable[R], dropped: Iterable[R]) -> dict[str, Any]:
    """kept.jsonl and dropped.jsonl in `directory` from records made one at a time (a stage that
    streams its pool never holds either side); returns the counts `Partition.counts` gives."""
    reasons: Counter[str] = Counter()

    def tally(records: Iterable[R]) -> Iterator[R]:
        for record in records:
            if record.drop is not None:
                reasons[record.drop.reason] += 1
            yield record

    n_kept = write_jsonl(directory / KEPT, kept)
    n_dropped = write_jsonl(directory / DROPPED, tally(dropped))
    return {"kept": n_kept, "dropped": n_dropped, "dropped_by_reason": dict(reasons)}
