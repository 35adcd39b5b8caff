"""Atomic writes, the manifest, and refusing to mix outputs of different configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scoder.config import load_config
from scoder.store import RunDir, StoreError, atomic_write_text, read_jsonl, write_jsonl


def test_failed_write_leaves_the_old_file_and_no_temp_files(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    def records():
        yield {"a": 2}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, records())
    assert read_jsonl(path) == [{"a": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_killed_writer_never_leaves_a_half_file(tmp_path):
    """SIGKILL a process that keeps rewriting a big file: every version read back is whole."""
    path = tmp_path / "big.json"
    script = (
        "import json, sys\n"
        "from scoder.store import atomic_write_text\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        f"    atomic_write_text({str(path)!r}, json.dumps({{'i': i, 'pad': 'x' * 4_000_000}}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    data = json.loads(path.read_text())
    assert data["i"] >= 1 and len(data["pad"]) == 4_000_000


def test_corrupt_jsonl_line_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(StoreError, match=r"x.jsonl:2: not a valid record"):
        read_jsonl(path)


def test_stage_records_manifest_and_refuses_a_different_config(tmp_path):
    run = RunDir(tmp_path / "run")
    config = load_config(None, ["random_seed=3", "synthesis.n=2"])
    with run.stage("seeds", config=config, fingerprint="fp1") as rec:
        atomic_write_text(run.stage_dir("seeds") / "seeds.jsonl", "")
        rec.counts = {"kept": 0}
    manifest = run.load_manifest()
    entry = manifest["stages"]["seeds"]
    assert (
        entry["status"] == "done" and entry["random_seed"] == 3 and entry["counts"] == {"kept": 0}
    )
    assert entry["started_at"] <= entry["finished_at"]
    assert manifest["environment"]["versions"]["scoder"]
    assert manifest["config"]["synthesis"]["n"] == 2 and manifest["config"]["random_seed"] == 3

    with (
        pytest.raises(StoreError, match="different config"),
        run.stage("seeds", config=config, fingerprint="fp2"),
    ):
        pass
    assert (run.stage_dir("seeds") / "seeds.jsonl").exists()  # refused: nothing discarded

    with run.stage("seeds", config=config, fingerprint="fp2", force=True):
        assert not (run.stage_dir("seeds") / "seeds.jsonl").exists()
    assert run.load_manifest()["stages"]["seeds"]["fingerprint"] == "fp2"


def test_failed_stage_is_recorded(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(ValueError), run.stage("x", config=load_config(), fingerprint="f"):
        raise ValueError("boom")
    entry = run.load_manifest()["stages"]["x"]
    assert entry["status"] == "failed" and "boom" in entry["error"]


def test_a_stage_stopped_by_a_full_disk_reports_its_own_error(tmp_path, monkeypatch):
    """The disk that stopped the stage refuses the manifest's update too: the error raised (and
    shown to the user) is the stage's, naming its file, not the manifest write after it."""
    import errno

    from scoder import store

    run = RunDir(tmp_path / "run")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "manifest.json")

    with pytest.raises(OSError) as raised, run.stage("x", config=load_config(), fingerprint="f"):
        monkeypatch.setattr(store, "write_json", full)
        raise OSError(errno.ENOSPC, "No space left on device", "kept.jsonl")
    assert raised.value.filename == "kept.jsonl"
    monkeypatch.undo()
    assert run.load_manifest()["stages"]["x"]["status"] == "running"  # resumed as interrupted


def test_run_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path):
    """Held here, the lock refuses another process at once, naming this one; a lock file left by
    a process that died (its pid written, its flock gone with it) is simply taken over."""
    from scoder.store import LOCK_FILE, run_lock

    probe = (
        "import sys\nfrom scoder.store import run_lock\n"
        "try:\n    with run_lock(sys.argv[1], 'probe'):\n        print('got it')\n"
        "except Exception as exc:\n    print(exc)\n"
    )

    def other_process() -> str:
        done = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True
        )
        return done.stdout

    with run_lock(tmp_path, "scoder run"):
        refused = " ".join(other_process().split())
        assert f"is in use by `scoder run` (pid {os.getpid()}" in refused
        with run_lock(tmp_path, "scoder run"):  # re-entrant within one process
            pass
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"pid": int(dead.stdout), "command": "scoder run", "since": "earlier"})
    )
    assert other_process().strip() == "got it"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    """Every file scoder writes (JSON, JSONL, the dataset's parquet file and data card) gets the
    mode the umask gives a new file, not mkstemp's 0600 (colleagues could not read a run)."""
    from conftest import make_candidate

    from scoder.dataset import write_dataset

    old = os.umask(umask)
    try:
        write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
        atomic_write_text(tmp_path / "b.json", "{}")
        write_dataset(tmp_path / "final", [make_candidate(problem="p", solution="s")], "card")
    finally:
        os.umask(old)
    written = [tmp_path / "a.jsonl", tmp_path / "b.json"]
    written += [tmp_path / "final" / n for n in ("dataset.jsonl", "dataset.parquet", "README.md")]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o666 & ~umask)}
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind
