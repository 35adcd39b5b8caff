"""The ledger's decisions, step by step: run, reuse, resume, re-run (discarding only the step's own
outputs) and why; results typed and paths relative; a dry run decides without running."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from scoder.errors import ScoderError
from scoder.ledger import LEDGER, Ledger


class Out(BaseModel):
    path: str
    value: int


def declare(ledger: Ledger, name: str, reads: dict, calls: list, after=(), outputs=None, **kw):
    def run(discard: bool) -> Out:
        calls.append((name, discard))
        target = ledger.root / f"{name}.txt"
        target.write_text(str(reads))
        return Out(path=f"{name}.txt", value=len(calls))

    return ledger.step(
        name,
        Out,
        code="test/1",
        reads=reads,
        after=after,
        outputs=outputs if outputs is not None else [f"{name}.txt"],
        run=run,
        **kw,
    )


def test_unchanged_steps_are_reused_and_a_change_reruns_it_and_what_follows(tmp_path):
    calls: list = []
    first = Ledger(tmp_path)
    a = declare(first, "a", {"x": 1}, calls)
    declare(first, "b", {"y": 1}, calls, after=[a])
    declare(first, "c", {"z": 1}, calls)
    assert calls == [("a", False), ("b", False), ("c", False)]
    assert [d.action for d in first.decisions] == ["run", "run", "run"]
    assert a.result == Out(path="a.txt", value=1)

    calls.clear()
    c_file = tmp_path / "c.txt"
    c_time = c_file.stat().st_mtime_ns
    again = Ledger(tmp_path)
    a = declare(again, "a", {"x": 2}, calls)
    declare(again, "b", {"y": 1}, calls, after=[a])
    declare(again, "c", {"z": 1}, calls)
    assert calls == [("a", True), ("b", True)]  # c reads nothing that changed
    assert [(d.action, d.why) for d in again.decisions] == [
        ("re-run", "x: 1 -> 2"),
        ("re-run", "a re-runs"),
        ("reuse", "unchanged"),
    ]
    assert c_file.stat().st_mtime_ns == c_time


def test_a_step_cut_short_resumes_and_a_missing_output_reruns(tmp_path):
    calls: list = []
    ledger = Ledger(tmp_path)

    def crash(discard: bool) -> Out:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ledger.step("a", Out, code="test/1", reads={}, run=crash)
    resumed = Ledger(tmp_path)
    declare(resumed, "a", {}, calls)
    assert resumed.decisions[0].action == "resume" and calls == [("a", False)]

    (tmp_path / "a.txt").unlink()
    later = Ledger(tmp_path)
    declare(later, "a", {}, calls)
    assert (later.decisions[0].action, later.decisions[0].why) == (
        "re-run",
        "its output a.txt is missing",
    )


def test_re_running_discards_only_the_steps_own_outputs(tmp_path):
    calls: list = []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "old.txt").write_text("old")
    (tmp_path / "theirs.txt").write_text("keep")
    ledger = Ledger(tmp_path)
    declare(ledger, "a", {"x": 1}, calls, outputs=["mine", "a.txt"])
    changed = Ledger(tmp_path)
    declare(changed, "a", {"x": 2}, calls, outputs=["mine", "a.txt"])
    assert not (tmp_path / "mine").exists() and (tmp_path / "theirs.txt").read_text() == "keep"


def test_still_valid_can_ask_for_a_rerun_with_the_same_identity(tmp_path):
    calls: list = []
    declare(Ledger(tmp_path), "pool", {}, calls)
    grown = Ledger(tmp_path)
    declare(
        grown, "pool", {}, calls, still_valid=lambda out: "too small" if out.value < 5 else None
    )
    assert (grown.decisions[0].action, grown.decisions[0].why) == ("re-run", "too small")


def test_dry_run_decides_without_running_and_writes_nothing(tmp_path):
    calls: list = []
    declare(Ledger(tmp_path), "a", {"x": 1}, calls)
    before = (tmp_path / LEDGER).read_text()
    dry = Ledger(tmp_path, dry_run=True)
    a = declare(dry, "a", {"x": 1}, calls)
    b = declare(dry, "b", {}, calls, after=[a])
    assert calls == [("a", False)] and [d.action for d in dry.decisions] == ["reuse", "run"]
    assert dry.known(a) == Out(path="a.txt", value=1) and dry.known(b) is None
    assert (tmp_path / LEDGER).read_text() == before


def test_results_keep_paths_relative_to_a_moved_run_directory(tmp_path):
    calls: list = []
    ledger = Ledger(tmp_path / "run")
    (tmp_path / "run").mkdir()
    a = declare(ledger, "a", {}, calls)
    assert ledger.rel(tmp_path / "run" / "a.txt") == "a.txt" == a.result.path
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = Ledger(tmp_path / "moved")
    a = declare(moved, "a", {}, calls)
    assert moved.decisions[0].action == "reuse"
    assert moved.abs(a.result.path).read_text() == "{}"


def test_a_ledger_of_an_older_scoder_is_refused_with_the_way_out(tmp_path):
    (tmp_path / LEDGER).write_text(json.dumps({"fingerprint": "abc", "done": {}}))
    with pytest.raises(ScoderError, match="--force"):
        Ledger(tmp_path)
