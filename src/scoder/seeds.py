"""Mine seed code snippets: top-level functions and classes from Python sources.

Sources: this Python's standard library (offline default), a directory or git checkout, a
JSONL/Parquet file with a text column, or a Hugging Face dataset. Every seed keeps its source (file
and line span, or dataset row); every file or snippet not kept is recorded with its reason.

With `max_seeds` set, files (or rows) are visited in an order fixed by the random seed, so the same
config always picks the same seeds, and mining stops as soon as enough are found.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import os
import platform
import re
import stat
import subprocess
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from scoder.builtin import builtin_path
from scoder.config import Config, SeedsConfig
from scoder.errors import ScoderError
from scoder.filters import DropReasons, Partition
from scoder.purity import impurity
from scoder.records import Seed, SeedSource
from scoder.store import RunDir, StoreError, fingerprint, read_jsonl

STAGE = "seeds"
VERSION = "seeds/2"  # bump when the same config would mine other seeds
SeedDrop = Literal[
    "duplicate",
    "empty",
    "too_large",
    "binary",
    "not_utf8",
    "syntax_error",
    "no_definitions",
    "too_short",
    "too_long",
    "not_pure",
    "outside_source",
    "not_a_file",
    "unreadable",
    "missing_column",
]
REASONS = DropReasons(STAGE, SeedDrop)
# Parts of the standard library that are tests, demos or vendored code rather than library code.
STDLIB_SKIP = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "__pycache__",
    "tkinter",
    "venv",
    "pydoc_data",
}


class SeedSourceError(ScoderError):
    pass


@dataclass
class _Unit:
    """One file or row of text to mine, before decoding."""

    source: SeedSource
    data: bytes | str | None
    size: int
    refused: tuple[SeedDrop, str] | None = None  # not read at all: the reason and its detail


def mine_seeds(
    cfg: SeedsConfig, random_seed: int = 0, *, max_seeds: int | None = None
) -> Partition[Seed]:
    """The seeds kept and the ones dropped (with reasons); at most `max_seeds` kept (default:
    cfg.max_seeds). With a limit, more seeds of the same config start with the same ones."""
    limit = max_seeds if max_seeds is not None else cfg.max_seeds
    out: Partition[Seed] = Partition()
    seen: dict[str, str] = {}
    for unit in _units(cfg, random_seed, ordered=limit is not None):
        for seed in _seeds_of_unit(unit, cfg):
            if seed.drop is None:
                key = _normalized_digest(seed.text)
                if key in seen:
                    seed = REASONS.drop(
                        seed, "duplicate", "same code as an earlier seed", related=seen[key]
                    )
                seen.setdefault(key, seed.id)
            (out.kept if seed.drop is None else out.dropped).append(seed)
            if limit is not None and len(out.kept) >= limit:
                return out
    return out


def source_kind(source: str) -> str:
    if source == "stdlib":
        return "stdlib"
    if source.startswith("hf:"):
        return "hf"
    if builtin_path(source):
        return "builtin"
    path = Path(source).expanduser()
    if path.is_dir():
        return "dir"
    if path.is_file():
        if path.suffix not in (".jsonl", ".json", ".parquet"):
            raise SeedSourceError(f"seed file {source} must be .jsonl or .parquet")
        return "file"
    raise SeedSourceError(
        f"seed source {source!r} is not 'stdlib', an existing directory or .jsonl/.parquet file, "
        "or 'hf:DATASET'"
    )


def _units(cfg: SeedsConfig, random_seed: int, *, ordered: bool) -> Iterator[_Unit]:
    """Files or rows to mine; `ordered`: in an order fixed by the random seed (a limited mine
    then takes a reproducible sample of the source)."""
    kind = source_kind(cfg.source)
    if kind == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [
            p for p in root.rglob("*.py") if not STDLIB_SKIP & set(p.relative_to(root).parts[:-1])
        ]
        yield from _file_units(root, files, "stdlib", cfg, random_seed, ordered)
    elif kind == "dir":
        root = Path(cfg.source).expanduser().resolve()
        yield from _file_units(root, _dir_files(root, cfg), "dir", cfg, random_seed, ordered)
    elif kind in ("file", "builtin"):
        path = builtin_path(cfg.source) or Path(cfg.source).expanduser()
        table = _read_table(path, cfg)
        yield from _row_units(table, cfg.source, "file", cfg, random_seed, ordered)
    else:
        yield from _row_units(_hf_rows(cfg), cfg.source[3:], "hf", cfg, random_seed, ordered)


def _shuffle_key(random_seed: int, name: str) -> str:
    # Order by a hash of (seed, name): reproducible, and adding one file does not reshuffle the rest.
    return hashlib.sha256(f"{random_seed}:{name}".encode()).hexdigest()


def _dir_files(root: Path, cfg: SeedsConfig) -> list[Path]:
    """Python files of a directory; in a git checkout, only the files git tracks."""
    files: list[Path] | None = None
    if (root / ".git").exists():
        try:
            listed = subprocess.run(
                ["git", "-C", str(root), "ls-files", "-z", "--", "*.py"],
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout.decode("utf-8", "surrogateescape")
            files = [root / name for name in listed.split("\0") if name]
        except (OSError, subprocess.SubprocessError):
            files = None
    if files is None:
        files = [p for p in root.rglob("*.py") if ".git" not in p.relative_to(root).parts]
    # not only regular files: a link, FIFO or device among them is refused with its reason
    return [
        f
        for f in files
        if not f.is_dir()
        and not any(fnmatch.fnmatch(str(f.relative_to(root)), pat) for pat in cfg.exclude)
    ]


def _file_units(
    root: Path, files: list[Path], kind: str, cfg: SeedsConfig, random_seed: int, ordered: bool
) -> Iterator[_Unit]:
    rels = sorted(str(f.relative_to(root)) for f in files)
    if ordered:
        rels.sort(key=lambda rel: _shuffle_key(random_seed, rel))
    inside = root.resolve()
    for rel in rels:
        # a file name that is not UTF-8 is recorded with U+FFFD for its odd bytes (JSON cannot
        # hold the raw bytes); the file itself is read by its real name
        location = os.fsencode(rel).decode("utf-8", "replace")
        yield _file_unit(inside, root / rel, SeedSource(kind=kind, location=location), cfg)


def _file_unit(inside: Path, path: Path, source: SeedSource, cfg: SeedsConfig) -> _Unit:
    """A file's bytes, or why it is not read: never a file outside the source tree (a link to
    /etc/passwd, or to a settings module elsewhere, would send its text to the synthesizer) and
    never a FIFO or a device (reading one can block forever)."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
        return _Unit(source, None, 0, ("unreadable", "a symbolic link loop"))
    if not real.is_relative_to(inside):
        return _Unit(source, None, 0, ("outside_source", f"a link to {real}, outside {inside}"))
    try:
        info = real.stat()
        if not stat.S_ISREG(info.st_mode):
            return _Unit(source, None, 0, ("not_a_file", "not a regular file (FIFO, device...)"))
        if info.st_size > cfg.max_file_bytes:
            return _Unit(source, None, info.st_size)
        with real.open("rb") as f:
            data = f.read(cfg.max_file_bytes + 1)  # a file that grew since stat() stays bounded
    except OSError as exc:
        return _Unit(source, None, 0, ("unreadable", exc.strerror or type(exc).__name__))
    return _Unit(source, data if len(data) <= cfg.max_file_bytes else None, len(data))


# A row of a JSONL seed file without the configured column (told apart from an empty value).
MISSING = object()


def _read_table(path: Path, cfg: SeedsConfig) -> Iterator[Any]:
    import datasets

    if path.suffix == ".jsonl":  # read here: a bad line is named by its line number
        try:
            rows = read_jsonl(path)
        except StoreError as exc:
            raise SeedSourceError(f"cannot read seed file: {exc}") from None
        values = [r.get(cfg.column, MISSING) if isinstance(r, dict) else MISSING for r in rows]
        if rows and all(v is MISSING for v in values):
            keys = sorted({k for r in rows if isinstance(r, dict) for k in r})
            raise SeedSourceError(
                f"seed file {path} has no column {cfg.column!r} (columns: {', '.join(keys)}); "
                "set seeds.column"
            )
        return iter(values)
    builder = "parquet" if path.suffix == ".parquet" else "json"
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for a malformed file
        raise SeedSourceError(
            f"cannot read seed file {path}: {type(exc).__name__}: {exc}"
        ) from None
    if cfg.column not in table.column_names:
        raise SeedSourceError(
            f"seed file {path} has no column {cfg.column!r} (columns: {', '.join(table.column_names)}); "
            "set seeds.column"
        )
    return iter(table[cfg.column])


def _hf_rows(cfg: SeedsConfig) -> Iterator[Any]:
    import datasets

    name = cfg.source[3:]
    try:
        ds = datasets.load_dataset(name, split=cfg.split, streaming=True)
    except Exception as exc:
        raise SeedSourceError(
            f"cannot load Hugging Face dataset {name!r}: {type(exc).__name__}: {exc}"
        ) from None
    for row in ds:
        if cfg.column not in row:
            raise SeedSourceError(
                f"dataset {name!r} has no column {cfg.column!r} (columns: {', '.join(row)})"
            )
        yield row[cfg.column]


def _row_units(
    rows: Iterator[Any],
    location: str,
    kind: str,
    cfg: SeedsConfig,
    random_seed: int,
    ordered: bool,
) -> Iterator[_Unit]:
    if ordered and kind == "file":  # a file or a builtin: read whole, then shuffled
        rows_list = list(rows)
        order = sorted(range(len(rows_list)), key=lambda i: _shuffle_key(random_seed, str(i)))
        indexed: Iterator[tuple[int, Any]] = ((i, rows_list[i]) for i in order)
    else:
        # A streamed hub dataset is read in its own order (shuffling needs the whole dataset).
        indexed = enumerate(rows)
    for i, value in indexed:
        source = SeedSource(kind=kind, location=location, row=i)
        if value is MISSING:
            yield _Unit(
                source, None, 0, ("missing_column", f"record {i + 1} has no {cfg.column!r}")
            )
            continue
        if value is not None and not isinstance(value, (str, bytes)):
            value = str(value)
        size = len(
            value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value or b""
        )
        yield _Unit(source, value if size <= cfg.max_file_bytes else None, size)


def _seeds_of_unit(unit: _Unit, cfg: SeedsConfig) -> Iterator[Seed]:
    def drop(reason: str, detail: str = "", text: str = "", **span: Any) -> Seed:
        source = unit.source.model_copy(update=span)
        seed = Seed(id=_seed_id(source, text), text=text, source=source)
        return REASONS.drop(seed, reason, detail)

    if unit.refused:
        yield drop(*unit.refused)
        return
    if unit.data is None:
        if unit.size == 0:
            yield drop("empty", "no text")
        else:
            yield drop("too_large", f"{unit.size} bytes > max_file_bytes={cfg.max_file_bytes}")
        return
    if isinstance(unit.data, bytes):
        if b"\0" in unit.data[:8192]:
            yield drop("binary", "contains NUL bytes")
            return
        try:
            text = unit.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield drop("not_utf8", str(exc))
            return
    else:
        text = unit.data
    if not text.strip():
        yield drop("empty", "no text")
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # invalid escape sequences in old code are not our business
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:  # too deep: not for us
        yield drop("syntax_error", f"{type(exc).__name__}: {exc}")
        return

    # lines as Python numbers them: str.splitlines also splits on form feeds, U+2028 and other
    # separators the tokenizer does not count, which would shift every span after one
    lines = re.split(r"\r\n|\r|\n", text)
    if lines[-1] == "":  # the text's final newline ends the last line, it starts none
        lines.pop()
    if cfg.unit == "whole":
        spans = [(1, len(lines), None)]
    else:
        spans = [
            (
                min([node.lineno, *(d.lineno for d in node.decorator_list)]),
                node.end_lineno,
                node.name,
            )
            for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        ]
        if not spans:
            yield drop("no_definitions", "no top-level function or class")
            return
    for start, end, name in spans:
        snippet = "\n".join(lines[start - 1 : end]).strip("\n")
        span = {"line_start": start, "line_end": end, "name": name}
        n_lines = end - start + 1
        if n_lines < cfg.min_lines:
            yield drop("too_short", f"{n_lines} lines < min_lines={cfg.min_lines}", snippet, **span)
        elif n_lines > cfg.max_lines:
            yield drop("too_long", f"{n_lines} lines > max_lines={cfg.max_lines}", snippet, **span)
        elif len(snippet) > cfg.max_chars:
            yield drop(
                "too_long", f"{len(snippet)} chars > max_chars={cfg.max_chars}", snippet, **span
            )
        elif cfg.pure_functions and (why := impurity(snippet)):
            yield drop("not_pure", why, snippet, **span)
        else:
            source = unit.source.model_copy(update=span)
            yield Seed(id=_seed_id(source, snippet), text=snippet, source=source)


def _seed_id(source: SeedSource, text: str) -> str:
    key = f"{source.kind}|{source.location}|{source.row}|{source.line_start}|{text}"
    return "seed-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _normalized_digest(code: str) -> str:
    """Equal for snippets that differ only in comments, blank lines and formatting."""
    try:
        normal = ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError):
        normal = " ".join(code.split())
    return hashlib.sha256(normal.encode("utf-8", "surrogatepass")).hexdigest()


def run_seeds(
    config: Config,
    *,
    run: RunDir | None = None,
    max_seeds: int | None = None,
    force: bool = False,
) -> tuple[RunDir, Partition[Seed]]:
    """`scoder seeds`: mine seeds into RUN/seeds/ (kept.jsonl, dropped.jsonl with reasons).

    `max_seeds` overrides seeds.max_seeds (the loop mines what its rounds need)."""
    cfg = config.seeds
    run = run or RunDir(config.run_dir)
    kind = source_kind(cfg.source)
    limit = max_seeds if max_seeds is not None else cfg.max_seeds
    identity: dict[str, Any] = {
        "seeds": {**cfg.model_dump(mode="json"), "max_seeds": limit},
        "random_seed": config.random_seed,
        "version": VERSION,
    }
    if kind == "stdlib":
        identity["python"] = platform.python_version()  # the stdlib differs between versions
    with run.stage(STAGE, config=config, fingerprint=fingerprint(identity), force=force) as record:
        mined = mine_seeds(cfg, config.random_seed, max_seeds=limit)
        record.counts = mined.write(run.stage_dir(STAGE))
        record.info["source"] = {"kind": kind, "source": cfg.source}
        if kind == "stdlib":
            record.info["source"]["python"] = platform.python_version()
    return run, mined
