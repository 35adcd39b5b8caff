"""What the command line prints: model output, file names and values are text, never markup."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_candidate

from scoder import display
from scoder.records import SeedSource
from scoder.store import RunDir

HOSTILE = "[/x] [bold red]not bold[/] [link=http://x]y"


def test_examples_files_and_stage_tables_print_brackets_as_they_are(tmp_path):
    """A problem a model wrote, a seed file's name, a run directory and a manifest count with
    brackets in them come out verbatim (as Rich markup `[/x]` raised MarkupError and `[b]`
    vanished)."""
    cand = make_candidate(
        problem=f"Write f. {HOSTILE}",
        solution="def f(xs):\n    return xs[0]",
        seed_source=SeedSource(kind="dir", location="[/x].py", name="f"),
    )
    run = RunDir(tmp_path / "[/x]")
    run.path.mkdir(parents=True)
    manifest = {"stages": {"synthesize": {"duration_s": 1.0, "counts": {"note": HOSTILE}}}}
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    with display.console.capture() as captured:
        display.print_examples([cand])
        display.print_files(Path("/data/[/tmp]"), "kept.jsonl")
        display.print_stage_summary(run, "synthesize")
    out = " ".join(captured.get().split())
    assert f"Write f. {HOSTILE}" in out
    assert "[/x].py:f" in out and "/data/[/tmp]/kept.jsonl" in out
    assert f"note │ {HOSTILE}" in out
