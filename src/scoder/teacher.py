"""`scoder teacher`: build D_p, the superior samples the synthesizer is first tuned on.

Three routes:
- generate: a (typically strong, API-served) model writes problem, solution and tests from seeds,
  with the same synthesis prompt and parser as `scoder synthesize`;
- import: an OSS-Instruct-style file or dataset (seed, problem, solution), columns mapped in
  `teacher.fields`;
- derive: problems with solutions (and tests), the seed snippet being a window of lines cut out of
  the solution at a position fixed by the random seed.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Literal

from scoder.builtin import builtin_path
from scoder.config import Config
from scoder.errors import ScoderError
from scoder.filters import DropReasons, Partition
from scoder.models import GenerationBackend, load_backend
from scoder.records import DpSample, Seed
from scoder.store import RunDir, file_digest, fingerprint, read_jsonl
from scoder.synthesize import synthesize

STAGE = "teacher"
VERSION = "teacher/1"  # bump when the same config would give another D_p
TeacherDrop = Literal["duplicate"]  # (answers of the generate route are dropped by synthesis)
REASONS = DropReasons(STAGE, TeacherDrop)


def _rows(source: str, split: str) -> tuple[list[dict[str, Any]], str]:
    import datasets

    try:
        if source.startswith("hf:"):
            table = datasets.load_dataset(source[3:], split=split)
        else:
            path = builtin_path(source) or Path(source).expanduser()
            if not path.is_file():
                raise ScoderError(f"teacher.source not found: {source}")
            if path.stat().st_size == 0:
                raise ScoderError(f"teacher.source {source} holds no rows (an empty file)")
            if path.suffix == ".jsonl":  # read here: a bad line is named by its number
                table = read_jsonl(path)
                bad = next((i for i, r in enumerate(table) if not isinstance(r, dict)), None)
                if bad is not None:
                    raise ScoderError(f"teacher.source {source}: row {bad + 1} is not an object")
            else:
                builder = "parquet" if path.suffix == ".parquet" else "json"
                table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except ScoderError:
        raise
    except Exception as exc:  # datasets raises many types for a bad file
        raise ScoderError(
            f"cannot read teacher.source {source}: {type(exc).__name__}: {exc}"
        ) from None
    if not len(table):
        raise ScoderError(f"teacher.source {source} holds no rows")
    return [dict(r) for r in table], source


def _field(
    row: dict[str, Any], column: str, field: str, index: int, source: str, required: bool = True
) -> str | None:
    value = row.get(column)
    if isinstance(value, list):
        value = "\n".join(str(v) for v in value)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ScoderError(
                f"{source}: row {index + 1} has no {field!r} (column {column!r}); set teacher.fields.{field}"
            )
        return None
    return str(value)


def seed_window(solution: str, seed: int, key: str, min_lines: int, max_lines: int) -> str:
    """A window of consecutive non-blank lines of the solution, placed by (seed, key)."""
    lines = solution.strip("\n").splitlines()
    rng = random.Random(f"{seed}:{key}")
    size = min(len(lines), rng.randint(min_lines, max(min_lines, max_lines)))
    start = rng.randint(0, len(lines) - size)
    window = lines[start : start + size]
    indent = min((len(line) - len(line.lstrip()) for line in window if line.strip()), default=0)
    return "\n".join(line[indent:] for line in window).strip("\n")


def from_table(config: Config) -> list[DpSample]:
    cfg = config.teacher
    if not cfg.source:
        raise ScoderError(f"teacher.route={cfg.route} needs teacher.source (a file or hf:DATASET)")
    rows, source = _rows(cfg.source, cfg.split)
    fields = {
        "seed_text": "seed",
        "problem": "problem",
        "solution": "solution",
        "tests": "tests",
        **cfg.fields,
    }
    out = []
    for i, row in enumerate(rows[: cfg.limit] if cfg.limit else rows):
        problem = _field(row, fields["problem"], "problem", i, source)
        solution = _field(row, fields["solution"], "solution", i, source)
        tests = _field(row, fields["tests"], "tests", i, source, required=False)
        if cfg.route == "import":
            seed = _field(row, fields["seed_text"], "seed_text", i, source)
        else:
            seed = seed_window(
                solution,
                config.random_seed,
                f"{source}:{i}",
                cfg.window_min_lines,
                cfg.window_max_lines,
            )
        key = hashlib.sha256(f"{seed}\0{problem}\0{solution}".encode()).hexdigest()[:16]
        out.append(
            DpSample(
                id=f"dp-{key}",
                seed_text=seed,
                problem=problem,
                solution=solution,
                tests=tests,
                route=cfg.route,
                source=source,
                row=i,
                license=cfg.license,
            )
        )
    return out


def run_teacher(
    config: Config,
    seeds_path: Path | None = None,
    *,
    run: RunDir | None = None,
    backend: GenerationBackend | None = None,
    force: bool = False,
) -> tuple[RunDir, list[DpSample]]:
    """`scoder teacher`: D_p into RUN/teacher/kept.jsonl; dropped.jsonl holds what was not kept
    (repeated rows; for the generate route, the answers that did not parse, as candidates)."""
    cfg = config.teacher
    run = run or RunDir(config.run_dir)
    identity: dict[str, Any] = {
        "teacher": cfg.model_dump(mode="json"),
        "random_seed": config.random_seed,
    }
    # one answer per seed: D_p is `limit` samples, whatever N the rounds sample with
    sampling = config.synthesis.model_copy(update={"n": 1})
    if cfg.route == "generate":
        seeds_path = seeds_path or run.stage_dir("seeds") / "kept.jsonl"
        if not seeds_path.is_file():
            raise ScoderError(
                f"no seeds at {seeds_path}: run `scoder seeds` first or pass --seeds FILE"
            )
        identity.update(
            model=(cfg.model or config.model).model_dump(mode="json"),
            synthesis=sampling.model_dump(mode="json"),
            seeds=file_digest(seeds_path),
        )
    elif cfg.source and (builtin_path(cfg.source) or Path(cfg.source)).is_file():
        identity["source"] = file_digest(builtin_path(cfg.source) or cfg.source)
    with run.stage(STAGE, config=config, fingerprint=fingerprint(identity), force=force) as record:
        out = run.stage_dir(STAGE)
        unparsed: list[Any] = []
        if cfg.route == "generate":
            seeds = read_jsonl(seeds_path, Seed)[: cfg.limit or None]
            backend = backend or load_backend(cfg.model or config.model)
            backend.use_request_log(out / "requests.jsonl")
            result = synthesize(
                seeds,
                backend,
                sampling,
                parts_dir=out / "parts",
                random_seed=config.random_seed,
                checkpoint="teacher",
            )
            samples = [
                DpSample(
                    id=f"dp-{c.id}",
                    seed_text=c.seed_text,
                    problem=c.problem or "",
                    solution=c.solution or "",
                    tests=c.tests,
                    route="generate",
                    source=c.seed_source.location,
                    row=c.seed_source.row,
                    model=c.model,
                    license=cfg.license,
                )
                for c in result.accepted
            ]
            unparsed = result.rejected
            record.info["model"] = backend.describe()
        else:
            samples = from_table(config)
        first: dict[str, DpSample] = {}
        repeated: list[DpSample] = []
        for sample in samples:  # the same row twice in a source is one sample
            if sample.id in first:
                detail = f"row {sample.row} repeats row {first[sample.id].row}"
                repeated.append(REASONS.drop(sample, "duplicate", detail, related=sample.id))
            else:
                first[sample.id] = sample
        # dropped: repeated rows, and the generate route's unusable answers (dropped by
        # synthesis' parser, kept with their raw output)
        kept: Partition[Any] = Partition(list(first.values()), [*repeated, *unparsed])
        counts = kept.write(out)
        record.counts = {
            "route": cfg.route,
            "samples": len(kept.kept),
            **{k: v for k, v in counts.items() if k != "kept"},
            "with_tests": sum(1 for s in kept.kept if s.tests),
        }
    return run, kept.kept
