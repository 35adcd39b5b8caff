"""The run directory: atomic writes, fingerprints, the run lock, the manifest, stage bookkeeping.

Every file is written to a temporary name in the same directory, fsynced, then renamed, so a killed
run leaves either the old file or the new one, never half of one. A stage records a fingerprint of
everything its output depends on; running it again into the same directory with a different
fingerprint is refused (outputs of two configs are never mixed) unless the caller forces a fresh
start of that stage. A command that writes into a run directory holds its lock (`run_lock`), so
two of them never work in one directory at once.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from scoder.errors import ScoderError
from scoder.progress import say

T = TypeVar("T", bound=BaseModel)


class StoreError(ScoderError):
    pass


class RunDirLocked(StoreError):
    pass


def fingerprint(data: Any) -> str:
    """A stable short hash of JSON-able data (config sections, file digests, step identities)."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


LOCK_FILE = ".lock"
_held_locks: dict[Path, int] = {}  # run directory -> how many holders in this process


@contextmanager
def run_lock(run_dir: str | Path, command: str = "scoder") -> Iterator[None]:
    """Hold RUN/.lock while writing into a run directory; refuse at once if another process holds
    it, naming that process.

    The lock is an flock on the file, so the kernel releases it when its holder dies however it
    dies: a lock left by a killed run is simply taken over. The file keeps the holder's pid and
    command for the message (and is never deleted: deleting it would let two processes lock two
    different files of the same name). Re-entrant within one process.
    """
    path = Path(run_dir).resolve()
    if path in _held_locks:
        _held_locks[path] += 1
        try:
            yield
        finally:
            _held_locks[path] -= 1
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise RunDirLocked(
            f"{path} is in use by {holder}: two runs in one directory would both do all the "
            "work and overwrite each other's records. Wait for it to finish, stop it, or use "
            "another run directory (--out)."
        ) from None
    try:
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "command": command, "since": now_iso()}
        os.write(fd, (json.dumps(info) + "\n").encode())
        _held_locks[path] = 1
        yield
    finally:
        _held_locks.pop(path, None)
        os.close(fd)  # closing releases the flock


def _lock_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"`{info['command']}` (pid {info['pid']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer (ours or a library's) to fill; on success it
    replaces `path` at once, with the mode the umask gives a new file (mkstemp's is 0600), so a
    reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _as_dict(record: BaseModel | dict) -> dict:
    return record.model_dump(mode="json") if isinstance(record, BaseModel) else record


@contextmanager
def jsonl_writer(path: str | Path) -> Iterator[Callable[[BaseModel | dict], int]]:
    """A function that appends one record as a JSON line and returns the byte offset it starts
    at (for a reference to it); the file appears, atomically, when the block ends."""
    offset = 0

    with atomic_path(path) as tmp, tmp.open("wb") as fh:

        def write(record: BaseModel | dict) -> int:
            nonlocal offset
            line = (json.dumps(_as_dict(record), ensure_ascii=False) + "\n").encode("utf-8")
            fh.write(line)
            at, offset = offset, offset + len(line)
            return at

        yield write


def write_jsonl(path: str | Path, records: Iterable[BaseModel | dict]) -> int:
    """Records as JSON lines, written one at a time (never the whole file in memory), atomically."""
    count = 0
    with jsonl_writer(path) as write:
        for record in records:
            write(record)
            count += 1
    return count


BLANK = object()  # what a blank line of a JSONL file parses to: no record


def parse_jsonl_line(path: Path, number: int, raw: bytes, model: type[T] | None = None) -> Any:
    """One line of a JSONL file as a record (BLANK for a blank line); a corrupt or foreign line
    is an error naming the file and line."""
    try:
        line = raw.decode("utf-8")
        if not line.strip():
            return BLANK
        obj = json.loads(line)
        return model.model_validate(obj) if model else obj
    except UnicodeDecodeError as exc:
        raise StoreError(
            f"{path}:{number}: not UTF-8 ({exc.reason} at byte {exc.start + 1} of the line)"
        ) from None
    # ValueError: invalid JSON, a record that does not validate, or an integer too long to
    # convert; RecursionError: nesting too deep for the parser
    except (ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{path}:{number}: not a valid record ({first})") from None


def scan_jsonl(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, raw line) of each line, one line in memory at a time."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"file not found: {path}")
    offset = 0
    with path.open("rb") as fh:  # lines split on \n alone, each decoded: errors name their line
        for number, raw in enumerate(fh, 1):
            yield number, offset, raw
            offset += len(raw)


def line_offsets(path: str | Path) -> list[int]:
    """The byte offsets of the records' lines of a JSONL file (blank lines have none)."""
    return [offset for _, offset, raw in scan_jsonl(path) if raw.decode("utf-8", "replace").strip()]


def iter_jsonl(path: str | Path, model: type[T] | None = None) -> Iterator[Any]:
    """The records of a JSONL file, read one line at a time (a stage's pass over a pool)."""
    path = Path(path)
    for number, _, raw in scan_jsonl(path):
        record = parse_jsonl_line(path, number, raw, model)
        if record is not BLANK:
            yield record


def read_jsonl(path: str | Path, model: type[T] | None = None) -> list[Any]:
    """Read a JSONL file; a corrupt or foreign line is an error naming the file and line."""
    return list(iter_jsonl(path, model))


class JsonlLines:
    """Lines of JSONL files read back by (file, byte offset): the random access a stage needs to
    write records in an order other than the one they were read in, without holding them. A few
    files stay open at a time (a pool's parts may be thousands)."""

    def __init__(self, paths: Sequence[str | Path], open_files: int = 16) -> None:
        self.paths = [Path(p) for p in paths]
        self._open: dict[int, Any] = {}
        self._limit = open_files

    def line(self, file: int, offset: int) -> bytes:
        fh = self._open.pop(file, None)
        if fh is None:
            if len(self._open) >= self._limit:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
            fh = self.paths[file].open("rb")
        self._open[file] = fh  # most recently used last
        fh.seek(offset)
        return fh.readline()

    def record(self, file: int, offset: int, model: type[T] | None = None) -> Any:
        raw = self.line(file, offset)
        return parse_jsonl_line(self.paths[file], 0, raw, model)

    def close(self) -> None:
        for fh in self._open.values():
            fh.close()
        self._open.clear()

    def __enter__(self) -> JsonlLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def part_path(parts_dir: Path, number: int) -> Path:
    """The file of a stage's chunk `number` (0-based) under its parts directory."""
    return parts_dir / f"part-{number:05d}.jsonl"


def resumable_chunks(
    items: Sequence[Any],
    chunk_size: int,
    parts_dir: Path,
    record_type: type[T],
    produce: Callable[[int, Sequence[Any]], list[T]],
) -> Iterator[tuple[Sequence[Any], list[T], bool]]:
    """Process items chunk by chunk, saving each chunk's records as it finishes.

    A chunk whose part file exists is read back instead of produced again, so a killed stage
    resumes after its last finished chunk. Yields (chunk, records, resumed).
    """
    reused = 0
    for start in range(0, len(items), chunk_size):
        chunk = items[start : start + chunk_size]
        part = part_path(parts_dir, start // chunk_size)
        if part.is_file():
            reused += 1
            yield chunk, read_jsonl(part, record_type), True
            continue
        if reused:
            say(f"resuming: {reused} finished chunks reused from {parts_dir}")
            reused = 0
        records = produce(start // chunk_size, chunk)
        write_jsonl(part, records)
        yield chunk, records, False
    if reused:
        say(f"resuming: all {reused} chunks were finished already in {parts_dir}")


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"{algorithm}:{h.hexdigest()}"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment_info() -> dict[str, Any]:
    """Versions that decide what a run produces."""
    from importlib import metadata

    versions = {}
    for dist in ("scoder", "torch", "transformers", "pydantic", "datasets"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": _git_commit(),
        "argv": sys.argv,
    }


def _git_commit() -> str | None:
    """The commit of the scoder source, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


@dataclass
class StageRecord:
    """What a running stage reports into the manifest."""

    name: str
    counts: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class RunDir:
    """One run's output directory and its manifest.json.

    `root` is the whole run's directory when this one is a part of it (a round of `scoder run`):
    paths under it that a stage records are stored relative to this directory, so that a run
    copied or moved elsewhere never points into the old place."""

    def __init__(self, path: str | Path, root: str | Path | None = None):
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def stage_dir(self, name: str) -> Path:
        return self.path / name

    def load_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return {}
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise StoreError(
                f"{self.manifest_path} is corrupt ({exc}); move it away to start over"
            ) from None

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.manifest_path, manifest)

    @contextmanager
    def stage(
        self, name: str, *, config: Any, fingerprint: str, force: bool = False
    ) -> Iterator[StageRecord]:
        """Run a stage: check the fingerprint, record start, end, counts and info.

        `config` is the command's resolved `Config` (stored at the top of the manifest, its
        random_seed with the stage); `fingerprint` covers everything this stage's outputs depend
        on.
        """
        manifest = self.load_manifest()
        previous = manifest.get("stages", {}).get(name)
        stage_dir = self.stage_dir(name)
        if previous and previous.get("fingerprint") != fingerprint and not force:
            raise StoreError(
                f"{stage_dir} holds '{name}' output made with a different config, model or "
                f"input (fingerprint {previous.get('fingerprint')} != {fingerprint}). Use "
                "another output directory, or --force to discard that output and start the "
                "stage afresh."
            )
        if force and stage_dir.exists():
            shutil.rmtree(stage_dir)
        if force or (previous and previous.get("fingerprint") != fingerprint):
            previous = None
        stage_dir.mkdir(parents=True, exist_ok=True)

        manifest.setdefault("created_at", now_iso())
        manifest["environment"] = environment_info()
        manifest["config"] = config.model_dump(mode="json")
        stages = manifest.setdefault("stages", {})
        started = time.time()
        entry = {
            "status": "running",
            "fingerprint": fingerprint,
            "random_seed": config.random_seed,
            "started_at": now_iso(),
            "attempts": (previous or {}).get("attempts", 0) + 1,
        }
        stages[name] = entry
        self._save_manifest(manifest)

        record = StageRecord(name)
        try:
            yield record
        except BaseException as exc:
            entry["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            # The full disk (or read-only directory) that stopped the stage may refuse the record
            # too: the error to report is the stage's own, and a manifest left at "running" is
            # resumed like an interrupted one.
            with suppress(OSError):
                self._finish(name, entry, record, started)
            raise
        entry["status"] = "done"
        self._finish(name, entry, record, started)

    def _relative(self, value: Any) -> Any:
        """`value` with every absolute path inside the run's root made relative to this
        directory ("../0/train/..." for another round's checkpoint); other values as they are."""
        if isinstance(value, dict):
            return {key: self._relative(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._relative(item) for item in value]
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str) and value.startswith(os.sep):
            root = str(self.root.resolve())
            resolved = os.path.realpath(value)
            if resolved == root or resolved.startswith(root + os.sep):
                return Path(os.path.relpath(resolved, self.path.resolve())).as_posix()
        return value

    def _finish(self, name: str, entry: dict, record: StageRecord, started: float) -> None:
        entry["finished_at"] = now_iso()
        entry["duration_s"] = round(time.time() - started, 3)
        entry["counts"] = record.counts
        entry.update(self._relative(record.info))
        manifest = self.load_manifest()
        manifest.setdefault("stages", {})[name] = entry
        manifest["updated_at"] = now_iso()
        self._save_manifest(manifest)
