"""The `scoder` command as a user runs it: help, errors without tracebacks, stages, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scoder.records import Candidate
from scoder.store import read_jsonl

SNIPPETS = "".join(
    f"def function_{i}(values):\n    total = {i}\n    for v in values:\n        total += v * {i}\n    return total\n\n\n"
    for i in range(6)
)


def scoder(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "scoder.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"scoder {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def seeds_dir(tmp_path):
    root = tmp_path / "code"
    root.mkdir()
    (root / "funcs.py").write_text(SNIPPETS)
    return root


def test_help_explains_every_command():
    top = scoder("--help").stdout
    assert "report" in top
    for command in ("seeds", "synthesize", "demo", "run"):
        assert command in top
        sub = scoder(command, "--help").stdout
        assert "Usage: scoder " + command in " ".join(sub.split())
        assert "--set" in sub and "--out" in sub


def test_fetch_prints_the_model_directory_or_one_clear_message(tiny_model_dir):
    proc = scoder("fetch", str(tiny_model_dir))
    assert proc.stdout.splitlines()[-1] == str(tiny_model_dir.resolve())
    assert "local, weights sha256:" in proc.stdout
    missing = scoder("fetch", "nobody/no-such-model", check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "could not load model 'nobody/no-such-model'" in " ".join(missing.stderr.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["seeds", "--set", "seeds.max_line=3"], "seeds.max_line: unknown key"),
        (["seeds", "--source", "/no/such/place"], "is not 'stdlib', an existing directory"),
        (["seeds", "--config", "/no/such.yaml"], "config file not found"),
        (["synthesize", "--seeds", "/no/seeds.jsonl"], "no seeds at /no/seeds.jsonl"),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path, args, message):
    proc = scoder(*args, "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr + proc.stdout


def test_failures_are_one_message_brackets_and_all_and_debug_shows_the_traceback(tmp_path):
    out = str(tmp_path / "run")
    proc = scoder("seeds", "--source", "/data/[/tmp]", "--out", out, check=False)
    assert proc.returncode == 2 and "/data/[/tmp]" in proc.stderr  # not read as markup
    assert "Traceback" not in proc.stderr + proc.stdout
    # the environment, not the input: a run directory that cannot be made
    proc = scoder("seeds", "--out", "/proc/self/no/run", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    assert "/proc/self/no" in proc.stderr and "Traceback" not in proc.stderr
    proc = scoder("--debug", "seeds", "--source", "/no/such/place", "--out", out, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    assert (tmp_path / "run" / "log.txt").is_file()


def _read_only(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """`scoder ARGS` with `directory` bind-mounted read-only (a private mount namespace: as root,
    file modes alone would not stop the writes)."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && shift 0 && exec "$@"'
    command = [sys.executable, "-m", "scoder.cli", *args]
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(directory), *command],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_a_read_only_run_directory_is_one_message_and_loses_nothing(tmp_path, seeds_dir):
    out = tmp_path / "run"
    scoder("seeds", "--source", str(seeds_dir), "--out", str(out))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for args in (
        ["seeds", "--source", str(seeds_dir), "--out", str(out)],  # nothing to do
        ["seeds", "--source", str(seeds_dir), "--out", str(out), "--force"],
        ["seeds", "--source", str(seeds_dir), "--out", str(out / "new")],
    ):
        proc = _read_only(out, *args)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("error: the file system is read-only"), proc.stderr
        assert "--out" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_missing_model_directory_is_a_clear_error(tmp_path, seeds_dir):
    out = str(tmp_path / "run")
    scoder("seeds", "--source", str(seeds_dir), "--out", out)
    proc = scoder("synthesize", "--out", out, "--model", "./no/such/model", check=False)
    assert proc.returncode == 2 and "model directory not found: ./no/such/model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_seeds_then_synthesize_on_a_user_directory(tmp_path, seeds_dir, tiny_model_dir):
    out = tmp_path / "run"
    scoder("seeds", "--source", str(seeds_dir), "--out", str(out))
    seeds = [json.loads(line) for line in (out / "seeds" / "kept.jsonl").read_text().splitlines()]
    assert len(seeds) == 6
    scoder(
        "synthesize",
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--n",
        "2",
        "--set",
        "synthesis.max_new_tokens=16",
        "--set",
        "model.device=cpu",
    )
    accepted = read_jsonl(out / "synthesize" / "kept.jsonl", Candidate)
    rejected = read_jsonl(out / "synthesize" / "dropped.jsonl", Candidate)
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["stages"]["synthesize"]["counts"]
    assert counts["generated"] == 12 == len(accepted) + len(rejected)
    assert counts["accepted"] + counts["rejected"] == counts["generated"]
    assert sum(counts["rejected_by_reason"].values()) == len(rejected)
    # A random model writes no usable answer: every candidate is kept with a reason.
    assert all(c.drop and c.drop.stage == "synthesize" and c.drop.reason for c in rejected)
    assert {(c.seed_id, c.sample_index) for c in accepted + rejected} == {
        (s["id"], j) for s in seeds for j in range(2)
    }
    model = manifest["stages"]["synthesize"]["model"]
    assert model["digest"].startswith("sha256:") and model["source"] == "local"
    assert manifest["stages"]["synthesize"]["template"]["digest"].startswith("sha256:")
    cand = (accepted + rejected)[0]
    assert cand.model_digest == model["digest"] and cand.sampling["max_new_tokens"] == 16
    assert cand.raw_output.startswith("### Problem\n")

    # the same run dir with another config is refused, and nothing is lost
    proc = scoder(
        "synthesize", "--out", str(out), "--model", str(tiny_model_dir), "--n", "3", check=False
    )
    assert proc.returncode == 2 and "different config" in proc.stderr
    assert len(read_jsonl(out / "synthesize" / "dropped.jsonl")) == len(rejected)


def test_synthesize_from_a_jsonl_seed_file(tmp_path, tiny_model_dir):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"content": SNIPPETS}) + "\n")
    out = str(tmp_path / "run")
    scoder("seeds", "--source", str(rows), "--out", out, "--max-seeds", "2")
    scoder(
        "synthesize",
        "--out",
        out,
        "--model",
        str(tiny_model_dir),
        "--set",
        "synthesis.max_new_tokens=8",
    )
    counts = json.loads(Path(out, "manifest.json").read_text())["stages"]["synthesize"]["counts"]
    assert counts["seeds"] == 2 and counts["generated"] == 2


def test_report_of_a_missing_or_corrupt_run_is_one_message(tmp_path):
    proc = scoder("report", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 2 and "is not a scoder run directory" in proc.stderr
    (tmp_path / "manifest.json").write_text('{"stages": {')
    proc = scoder("report", str(tmp_path), check=False)
    assert proc.returncode == 2 and f"{tmp_path / 'manifest.json'} is corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr
