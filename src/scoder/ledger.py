"""RUN/loop.json: the steps of `scoder run`, each with its identity, and whether to reuse it.

A step's identity is a fingerprint of its own inputs: the config values it reads, the identities
of the steps whose results it consumes, and the version of the code it runs. Declaring a step
either reuses what an earlier run left (same identity, finished), continues it (same identity, cut
short: its stage resumes from its saved chunks), or runs it afresh, first discarding the outputs
it owned (a new identity: something it reads changed, or a step it consumes did). So a config
change re-runs exactly the steps it reaches and those downstream of them; nothing else is touched.

Results are small pydantic models stored in the ledger as JSON, with paths relative to the run
directory: a copied or moved run directory resumes from its own files. A dry run decides every
step the same way without running any, and says why.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from scoder.errors import ScoderError
from scoder.store import fingerprint, now_iso, write_json

LEDGER = "loop.json"
LEDGER_VERSION = 2

T = TypeVar("T", bound=BaseModel)
Action = Literal["reuse", "run", "resume", "re-run"]


class StepEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: str
    code: str
    reads: dict[str, Any]  # what it read of the config (to say what changed)
    after: dict[str, str]  # the steps it consumes -> their identities
    outputs: list[str]  # paths it owns, relative to the run directory
    status: Literal["started", "done"]
    result: dict[str, Any] | None = None
    started_at: str
    finished_at: str | None = None
    seconds: float | None = None


class LedgerFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = LEDGER_VERSION
    created_at: str
    updated_at: str
    steps: dict[str, StepEntry] = {}


@dataclass(frozen=True)
class Decision:
    step: str
    action: Action
    why: str


@dataclass(frozen=True)
class Step(Generic[T]):
    """A declared step: its name and identity; its result once it has run (or was reused)."""

    name: str
    identity: str
    result_type: type[T]
    ledger: Ledger

    @property
    def result(self) -> T:
        value = self.ledger.known(self)
        if value is None:
            raise ScoderError(f"step {self.name} has no result yet")
        return value


class Ledger:
    """The steps finished in one run directory, and the decisions of this invocation."""

    def __init__(
        self,
        run_dir: Path,
        *,
        dry_run: bool = False,
        report: Callable[[Decision], None] | None = None,
    ) -> None:
        self.root = Path(run_dir)
        self.path = self.root / LEDGER
        self.dry_run = dry_run
        self.report = report or (lambda decision: None)
        self.decisions: list[Decision] = []
        self.declared: list[Step[Any]] = []
        self._actions: dict[str, Action] = {}
        self.data = self._load()

    def _load(self) -> LedgerFile:
        if not self.path.is_file():
            return LedgerFile(created_at=now_iso(), updated_at=now_iso())
        try:
            return LedgerFile.model_validate_json(self.path.read_text(encoding="utf-8"))
        except ValidationError:
            raise ScoderError(
                f"{self.path} is not a ledger this scoder can read (made by an earlier "
                "version, or damaged). Use another run directory, or --force to discard it and "
                "start afresh."
            ) from None

    def save(self) -> None:
        if self.dry_run:
            return
        self.data.updated_at = now_iso()
        write_json(self.path, self.data.model_dump(mode="json"))

    def rel(self, path: str | Path) -> str:
        """A path inside the run directory, as the ledger stores it."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def abs(self, rel: str) -> Path:
        return self.root / rel

    def known(self, step: Step[T]) -> T | None:
        """The step's result, when it has one (a dry run knows only reused steps')."""
        entry = self.data.steps.get(step.name)
        if entry is None or entry.status != "done" or entry.identity != step.identity:
            return None
        return step.result_type.model_validate(entry.result)

    def step(
        self,
        name: str,
        result_type: type[T],
        *,
        code: str,
        reads: dict[str, Any],
        after: Sequence[Step[Any] | None] = (),
        outputs: Sequence[str] = (),
        run: Callable[[bool], T],
        still_valid: Callable[[T], str | None] | None = None,
    ) -> Step[T]:
        """Declare a step; run it now (`run(discard)`, discard: its earlier outputs are gone and
        its stages must start afresh) unless an earlier run's result can be reused."""
        consumed = {s.name: s.identity for s in after if s is not None}
        identity = fingerprint({"step": name, "code": code, "reads": reads, "after": consumed})
        handle = Step(name, identity, result_type, self)
        self.declared.append(handle)
        entry = self.data.steps.get(name)
        action, why = self._decide(entry, identity, code, reads, consumed, outputs)
        if action == "reuse" and still_valid is not None and entry is not None:
            stale = still_valid(result_type.model_validate(entry.result))
            if stale:
                action, why = "re-run", stale
        self._actions[name] = action
        decision = Decision(name, action, why)
        self.decisions.append(decision)
        self.report(decision)
        if action == "reuse" or self.dry_run:
            return handle
        discard = action == "re-run"
        if discard:
            self._discard({*(entry.outputs if entry else []), *outputs})
        self.data.steps[name] = StepEntry(
            identity=identity,
            code=code,
            reads=reads,
            after=consumed,
            outputs=list(outputs),
            status="started",
            started_at=now_iso(),
        )
        self.save()
        started = time.perf_counter()
        result = run(discard)
        finished = self.data.steps[name]
        finished.status = "done"
        finished.result = result.model_dump(mode="json")
        finished.finished_at = now_iso()
        finished.seconds = round(time.perf_counter() - started, 3)
        self.save()
        return handle

    def _decide(
        self,
        entry: StepEntry | None,
        identity: str,
        code: str,
        reads: dict[str, Any],
        consumed: dict[str, str],
        outputs: Sequence[str],
    ) -> tuple[Action, str]:
        if entry is None:
            return "run", "not run yet"
        if entry.identity != identity:
            return "re-run", _what_changed(entry, code, reads, consumed, self._actions)
        if entry.status == "started":
            return "resume", "cut short: continues from its saved work"
        missing = [p for p in outputs if not self.abs(p).exists()]
        if missing:
            return "re-run", f"its output {missing[0]} is missing"
        return "reuse", "unchanged"

    def _discard(self, outputs: set[str]) -> None:
        for rel in sorted(outputs):
            target = self.abs(rel)
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def not_declared(self) -> list[str]:
        """Steps an earlier run finished that this run's recipe no longer has (left in place)."""
        names = {s.name for s in self.declared}
        return [name for name in self.data.steps if name not in names]


def _what_changed(
    entry: StepEntry,
    code: str,
    reads: dict[str, Any],
    consumed: dict[str, str],
    actions: dict[str, Action],
) -> str:
    changes = [
        f"{key}: {_short(before)} -> {_short(now)}"
        for key, before, now in _differences(entry.reads, reads)
    ]
    for name in sorted(set(consumed) | set(entry.after)):
        if name not in entry.after:
            changes.append(f"now consumes {name}")
        elif name not in consumed:
            changes.append(f"no longer consumes {name}")
        elif consumed[name] != entry.after[name]:
            changes.append(f"{name} {'re-runs' if actions.get(name) != 'reuse' else 'changed'}")
    if entry.code != code:
        changes.append(f"code {entry.code} -> {code}")
    return "; ".join(changes) or "its identity changed"


def _differences(before: Any, now: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(before) | set(now), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            out += _differences(before.get(key), now.get(key), where)
        return out
    return [] if before == now else [(prefix, before, now)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
