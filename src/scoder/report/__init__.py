"""`scoder report RUN_DIR`: one self-contained HTML page of what a run did (RUN/report.html).

facts  <- the run directory's own files (scoder.report.facts)
page   <- tables, matplotlib figures and a sample browser, all embedded (scoder.report.page)
"""

from __future__ import annotations

from pathlib import Path

from scoder.errors import ScoderError
from scoder.report.facts import RunFacts, run_facts
from scoder.report.page import render
from scoder.store import atomic_write_bytes

__all__ = ["RunFacts", "run_facts", "write_report"]


def write_report(
    run_dir: Path,
    out: Path | None = None,
    *,
    sample_limit: int = 5000,
    facts: RunFacts | None = None,
) -> Path:
    """Write the report of the run in `run_dir` to `out` (default RUN/report.html); `facts`:
    the run's, when the caller has read them already."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file() and not (run_dir / "loop.json").is_file():
        raise ScoderError(
            f"{run_dir} is not a scoder run directory (no manifest.json or loop.json)"
        )
    out = out or run_dir / "report.html"
    page = render(facts or run_facts(run_dir, sample_limit=sample_limit))
    atomic_write_bytes(out, page.encode("utf-8"))
    return out
