"""Progress of long stages: one live line each on a terminal, one line per finished stage
elsewhere, and everything (third-party logs included) in the run's log file.

Stages call `track(description, total, unit)` and advance the returned task; they never print.
The command line chooses how it is shown (`configure`): `live` (a TTY: rich bars with done/total,
rate and ETA, and a field such as the training loss), `lines` (not a TTY, or --quiet: no bars, a
line when a stage ends) or `off` (library use: nothing shown, nothing logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

Mode = Literal["live", "lines", "off"]
LOG = logging.getLogger("scoder")
LOG.addHandler(logging.NullHandler())  # no handler configured: say nothing (not Python's stderr)


class _Rate(ProgressColumn):
    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "")
        return Text(
            f"{speed:.2f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed"
        )


@dataclass
class _State:
    mode: Mode = "off"
    console: Console | None = None
    progress: Progress | None = None
    open_tasks: int = 0
    verbose: bool = False
    quieted: bool = False
    log_handlers: list[logging.Handler] = field(default_factory=list)


_STATE = _State()


def configure(mode: Mode, console: Console | None = None, *, verbose: bool = False) -> None:
    """How progress is shown from now on (the command line calls this once); `verbose` keeps
    third-party bars and warnings on the terminal (see `quiet_third_parties`)."""
    import os

    _STATE.mode = mode
    _STATE.console = console or Console(stderr=True)
    _STATE.verbose = verbose
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def log_to(path: Path) -> None:
    """Send every log record (scoder's lines, transformers', datasets', warnings) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for handler in _STATE.log_handlers:
        if getattr(handler, "baseFilename", None) == str(path.resolve()):
            return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _STATE.log_handlers.append(handler)
    logging.captureWarnings(True)


def quiet_third_parties() -> None:
    """Called where models load (scoder.models.loading), so that a command which loads none
    never pays for importing transformers: weight-loading and conversion bars and library
    warnings go to the log file only (and to the terminal as well with --verbose). Used as a
    library (no `configure`), only transformers' per-tensor bars are switched off."""
    if _STATE.quieted:
        return
    _STATE.quieted = True
    from transformers.utils import logging as hf_logging

    if _STATE.mode == "off":
        hf_logging.disable_progress_bar()  # a per-tensor bar on every load is noise
        return
    hf_logging.enable_propagation()  # into the root logger, hence the log file
    if _STATE.verbose:
        hf_logging.set_verbosity_info()
        return
    hf_logging.disable_default_handler()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()
    for name in ("datasets", "peft", "trl", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)


def say(message: str) -> None:
    """One line for the person at the terminal (and the log)."""
    LOG.info(message)
    if _STATE.mode != "off" and _STATE.console is not None:
        _STATE.console.print(message, highlight=False, soft_wrap=True, markup=False)


class ProgressTask:
    """One stage's progress: `advance(n, loss=...)` as items finish."""

    def __init__(self, description: str, total: int | None, unit: str) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self.started = time.monotonic()
        self.fields: dict[str, Any] = {}
        self._id = None
        if _STATE.progress is not None:
            self._id = _STATE.progress.add_task(description, total=total, unit=unit, detail="")

    def set_total(self, total: int) -> None:
        self.total = total
        self._show(total=total)

    def note(self, **fields: Any) -> None:
        """Fields shown on the line (e.g. loss=0.82) without advancing it."""
        self.advance(0, **fields)

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        self._show(advance=n, detail=self._detail())

    def _show(self, **update: Any) -> None:
        if _STATE.progress is not None and self._id is not None:
            _STATE.progress.update(self._id, **update)

    def _detail(self) -> str:
        return "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items()
        )

    def finish(self) -> str:
        seconds = time.monotonic() - self.started
        rate = f", {self.done / seconds:.2f} {self.unit}/s" if seconds > 0 and self.done else ""
        detail = f" ({self._detail()})" if self.fields else ""
        return f"{self.description}: {self.done} {self.unit} in {seconds:.1f} s{rate}{detail}"


@contextmanager
def track(description: str, total: int | None, unit: str = "items") -> Iterator[ProgressTask]:
    """A progress line for one long stage; a line saying what it did when it ends."""
    if _STATE.mode == "live" and _STATE.progress is None:
        _STATE.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            _Rate(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=_STATE.console,
            transient=True,
        )
        _STATE.progress.start()
    _STATE.open_tasks += 1
    task = ProgressTask(description, total, unit)
    try:
        yield task
    finally:
        _STATE.open_tasks -= 1
        if _STATE.progress is not None and task._id is not None:
            _STATE.progress.remove_task(task._id)
        if _STATE.progress is not None and _STATE.open_tasks == 0:
            _STATE.progress.stop()
            _STATE.progress = None
        say(task.finish())
