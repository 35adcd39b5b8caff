"""The records that flow between stages.

Every record keeps where it came from; every record a stage drops keeps the stage and the reason.
Fields are fixed (missing values are null), so each JSONL file has one schema and loads with
`datasets.load_dataset("json", ...)`.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Generic, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field

from scoder.errors import ScoderError
from scoder.store import BLANK, JsonlLines, iter_jsonl, parse_jsonl_line, read_jsonl, scan_jsonl

# The large raw texts of a candidate are stored once, capped, in the raw store (RAW_FILE) of the
# stage that first holds them all (score), and every records file after it refers to them.
RAW_FILE = "raw.jsonl"
# The tail of a failing run's stderr: the exception and its innermost frames, what says why it
# failed; a test's assertion traceback is 0.5-1.5 KB, a deep recursion's is megabytes of repeats.
STDERR_CAP = 2_000
# The head of a raw output: 4x what the default synthesis.max_new_tokens (512) writes, so at
# default settings nothing is cut; a runaway completion keeps its start (where the answer is) and
# its full length.
RAW_OUTPUT_CAP = 16_000


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
    rds: float | None = None  # RDS+ similarity to D_p, filled by the select stage (strategy rds)
    drop: Drop | None = None
    # Where raw_output and execution.stderr are when they are not inline (then both are ""):
    # "<raw store>#<byte offset of its row>", the store's path relative to the directory of the
    # file holding this record. None: inline (older runs; stages before scoring).
    raw_ref: str | None = None

    @property
    def passed(self) -> bool:
        """Its own tests passed in the sandbox, and they test something."""
        return self.execution is not None and self.execution.trusted_pass


class RawTexts(_Record):
    """A candidate's raw output and stderr, capped: one row of a raw store."""

    id: str
    raw_output: str
    raw_output_chars: int  # its length before the cap
    stderr: str = ""


def raw_texts(c: Candidate) -> RawTexts:
    """The raw store row of a candidate whose texts are inline."""
    stderr = c.execution.stderr[-STDERR_CAP:] if c.execution else ""
    return RawTexts(
        id=c.id,
        raw_output=c.raw_output[:RAW_OUTPUT_CAP],
        raw_output_chars=len(c.raw_output),
        stderr=stderr,
    )


def refer_raw(c: Candidate, ref: str) -> Candidate:
    """`c` with its raw texts taken out, pointing at where they are stored."""
    execution = c.execution.model_copy(update={"stderr": ""}) if c.execution else None
    return c.model_copy(update={"raw_output": "", "execution": execution, "raw_ref": ref})


def rebase_raw(c: Candidate, from_dir: Path, to_dir: Path) -> Candidate:
    """`c`, read from a file in `from_dir`, as a file in `to_dir` must hold it: its reference
    relative to the new place (a record moves, its texts stay where they were stored)."""
    if c.raw_ref is None:
        return c
    store, _, offset = c.raw_ref.rpartition("#")
    moved = os.path.relpath(os.path.join(from_dir, store), to_dir)
    return c.model_copy(update={"raw_ref": f"{Path(moved).as_posix()}#{offset}"})


class RawReader:
    """Resolves candidates' raw references, for records read from files in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lines = JsonlLines([])
        self._stores: dict[Path, int] = {}  # store -> its number in self._lines

    def texts(self, c: Candidate) -> RawTexts:
        if c.raw_ref is None:
            return raw_texts(c)
        store, _, offset = c.raw_ref.rpartition("#")
        path = (self.directory / store).resolve()
        if path not in self._stores:
            self._stores[path] = len(self._lines.paths)
            self._lines.paths.append(path)
        row = self._lines.record(self._stores[path], int(offset), RawTexts)
        if row.id != c.id:
            raise ScoderError(
                f"{path} at byte {offset} holds the raw texts of {row.id}, not of {c.id}: the "
                "raw store does not belong with these records"
            )
        return row

    def inline(self, c: Candidate) -> Candidate:
        """`c` with its raw output and stderr in the record again (as stored: capped)."""
        if c.raw_ref is None:
            return c
        row = self.texts(c)
        execution = c.execution.model_copy(update={"stderr": row.stderr}) if c.execution else None
        return c.model_copy(
            update={"raw_output": row.raw_output, "execution": execution, "raw_ref": None}
        )

    def close(self) -> None:
        self._lines.close()


def read_candidates_with_raw(path: Path) -> Iterator[Candidate]:
    """The candidates of a records file with their raw texts inline, one at a time."""
    reader = RawReader(Path(path).parent)
    try:
        for c in iter_jsonl(path, Candidate):
            yield reader.inline(c)
    finally:
        reader.close()


T = TypeVar("T", bound=BaseModel)


class StoredRecords(Sequence[T], Generic[T]):
    """Records of one JSONL file, read from disk when used, so a stage passes a pool on without
    holding it: len() is free, iterating reads one record at a time, indexing seeks to the
    record's line. `offsets` are the byte offsets of the lines it covers (all lines: None).

    A scanned file stays open: its records are read from that very file even when its path is
    replaced or removed meanwhile (a stage that rewrites, or --force removes, its own input)."""

    def __init__(
        self,
        path: Path,
        model: type[T],
        offsets: array | None = None,
        *,
        count: int | None = None,
        handle: BinaryIO | None = None,
    ) -> None:
        self.path = Path(path)
        self.model = model
        self._offsets = offsets
        self._count = count
        self._fh = handle

    @classmethod
    def scan(
        cls,
        path: Path,
        model: type[T],
        keep: Callable[[T], bool] = lambda r: True,
        *,
        each: Callable[[T], None] | None = None,
    ) -> StoredRecords[T]:
        """The records of `path` that `keep` keeps, every line validated once (an error names its
        line); `each` sees every kept record as it passes (to collect its small fields)."""
        offsets = array("q")
        fh = Path(path).open("rb")  # noqa: SIM115 (held open on purpose: see the class)
        try:
            offset = 0
            for number, raw in enumerate(fh, 1):  # lines split on \n alone, as read_jsonl's
                record = parse_jsonl_line(path, number, raw, model)
                if record is not BLANK and keep(record):
                    offsets.append(offset)
                    if each is not None:
                        each(record)
                offset += len(raw)
        except BaseException:
            fh.close()
            raise
        return cls(path, model, offsets, handle=fh)

    def offsets(self) -> array:
        if self._offsets is None:
            found = array("q")
            for number, offset, raw in scan_jsonl(self.path):
                if parse_jsonl_line(self.path, number, raw) is not BLANK:
                    found.append(offset)
            self._offsets = found
        return self._offsets

    def _record(self, offset: int) -> T:
        if self._fh is None:
            self._fh = self.path.open("rb")
        self._fh.seek(offset)
        return parse_jsonl_line(self.path, 0, self._fh.readline(), self.model)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __len__(self) -> int:
        if self._offsets is None and self._count is not None:
            return self._count
        return len(self.offsets())

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> StoredRecords[T]: ...

    def __getitem__(self, index: int | slice) -> T | StoredRecords[T]:
        if isinstance(index, slice):
            offsets = self.offsets()[index]
            return StoredRecords(self.path, self.model, offsets, handle=self._fh)
        return self._record(self.offsets()[index])

    def __iter__(self) -> Iterator[T]:
        if self._offsets is None and self._fh is None:
            yield from iter_jsonl(self.path, self.model)
            return
        yield from self.read(range(len(self.offsets())))

    def __add__(self, other: Sequence[T]) -> list[T]:
        """Both read into one list, as two lists of records would add up."""
        return [*self, *other]

    def __radd__(self, other: Sequence[T]) -> list[T]:
        return [*other, *self]

    def read(self, positions: Iterable[int]) -> Iterator[T]:
        """The records at these positions, in this order."""
        offsets = self.offsets()
        for i in positions:
            yield self._record(offsets[i])


def scan_candidates(
    path: Path, made_by: str, each: Callable[[Candidate], None] | None = None
) -> StoredRecords[Candidate]:
    """The kept candidates of a stage's output file, validated and left on disk, or one clear
    error; `each` sees every one as it passes."""
    if not path.is_file():
        raise ScoderError(
            f"no candidates at {path}: run `scoder {made_by}` first or pass --candidates FILE"
        )
    candidates = StoredRecords.scan(path, Candidate, lambda c: c.drop is None, each=each)
    if not candidates:
        raise ScoderError(f"{path} holds no kept candidates")
    return candidates


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
