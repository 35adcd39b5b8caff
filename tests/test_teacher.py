"""`scoder teacher`: D_p by derive, import and generate (through `scoder serve`), with resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources

import pytest
from conftest import SHARED

from scoder.config import load_config
from scoder.errors import ScoderError
from scoder.records import DpSample
from scoder.store import read_jsonl
from scoder.teacher import run_teacher, seed_window

MBPP = SHARED / "data" / "mbpp.jsonl"


def mbpp_table(tmp_path, count=20):
    rows = [json.loads(line) for line in MBPP.read_text().splitlines()]
    train = [
        {"problem": r["text"], "solution": r["code"], "tests": r["test_list"]}
        for r in rows
        if r["task_id"] >= 601
    ][:count]
    path = tmp_path / "mbpp_train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in train))
    return path, train


def test_derive_cuts_a_reproducible_seed_window_out_of_the_solution(tmp_path):
    path, train = mbpp_table(tmp_path)
    sets = [
        f"run_dir={tmp_path / 'a'}",
        "teacher.route=derive",
        f"teacher.source={path}",
        "teacher.license=CC-BY-4.0",
    ]
    _, a = run_teacher(load_config(None, sets))
    _, b = run_teacher(load_config(None, [*sets[1:], f"run_dir={tmp_path / 'b'}"]))
    _, c = run_teacher(load_config(None, [*sets[1:], f"run_dir={tmp_path / 'c'}", "random_seed=1"]))
    assert len(a) == 20 and [s.seed_text for s in a] == [s.seed_text for s in b]
    assert [s.seed_text for s in a] != [s.seed_text for s in c]
    for sample, row in zip(a, train):
        assert sample.problem == row["problem"] and sample.tests == "\n".join(row["tests"])
        lines = [line.strip() for line in sample.seed_text.splitlines()]
        solution = (
            [line.strip() for line in row["code"].splitlines()]
            if "code" in row
            else [line.strip() for line in row["solution"].splitlines()]
        )
        assert 1 <= len(lines) <= 8 and all(line in solution for line in lines)
        assert sample.license == "CC-BY-4.0" and sample.route == "derive"


def test_seed_window_bounds():
    code = "\n".join(f"    line_{i} = {i}" for i in range(20))
    w = seed_window(code, 0, "k", 3, 5)
    assert 3 <= len(w.splitlines()) <= 5 and not w.startswith(" ")
    assert seed_window("x = 1", 0, "k", 3, 8) == "x = 1"


def test_import_maps_fields_and_names_the_missing_one(tmp_path):
    path = tmp_path / "oss.jsonl"
    rows = [
        {"seed": "def f(): pass", "instruction": "Do f.", "response": "def f():\n    return 1"}
    ] * 2
    rows.append(
        {"seed": "def g(): pass", "instruction": "Do g.", "response": "def g():\n    return 2"}
    )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = [
        f"run_dir={tmp_path / 'run'}",
        "teacher.route=import",
        f"teacher.source={path}",
        "teacher.fields={problem: instruction, solution: response}",
    ]
    run, samples = run_teacher(load_config(None, sets))
    assert len(samples) == 2  # the repeated row is one sample
    assert (
        samples[0].seed_text == "def f(): pass"
        and samples[0].problem == "Do f."
        and samples[0].tests is None
    )
    assert len(read_jsonl(run.stage_dir("teacher") / "kept.jsonl", DpSample)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(rows[0]) + "\n" + json.dumps({"seed": "x", "instruction": "y"}) + "\n"
    )
    with pytest.raises(ScoderError, match=r"row 2 has no 'solution' \(column 'response'\)"):
        run_teacher(load_config(None, [*sets[:2], f"teacher.source={bad}", sets[3]]), force=True)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", r"empty.jsonl holds no rows"),
        ("empty.parquet", b"", r"empty.parquet holds no rows"),
        ("blank.jsonl", b"\n\n", r"blank.jsonl holds no rows"),
        ("cut.jsonl", b'{"seed": "x"}\n{"seed": \n', r"cut.jsonl:2: not a valid record"),
        ("list.jsonl", b'{"seed": "x"}\n[1, 2]\n', r"list.jsonl: row 2 is not an object"),
    ],
)
def test_an_empty_or_broken_teacher_file_is_one_clear_message(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    sets = [f"run_dir={tmp_path / 'run'}", "teacher.route=import", f"teacher.source={path}"]
    with pytest.raises(ScoderError, match=message):
        run_teacher(load_config(None, sets))


def test_shipped_demo_dp_is_complete_and_attributed():
    text = (resources.files("scoder") / "data" / "dp_mbpp_train.jsonl").read_text()
    samples = [DpSample.model_validate_json(line) for line in text.splitlines()]
    assert len(samples) == 374 and len({s.id for s in samples}) == 374
    assert all(
        s.license.startswith("CC-BY-4.0") and s.source.startswith("mbpp/task_id=") for s in samples
    )
    assert all(601 <= s.row <= 974 and s.tests and s.seed_text.strip() for s in samples)
    assert "CC-BY-4.0" in (resources.files("scoder") / "data" / "README.md").read_text()


def test_generate_route_killed_and_resumed_sends_only_missing_requests(server, tmp_path):
    """Kill -9 a `scoder teacher --route generate` run against `scoder serve`, run it again.
    The teacher answers each seed once, whatever N the rounds sample with (synthesis.n=3)."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "m.py").write_text(
        "".join(f"def f{i}(x):\n    y = x + {i}\n    return y * {i}\n\n\n" for i in range(8))
    )
    out = tmp_path / "run"
    args = [
        "--out",
        str(out),
        "--set",
        "model.backend=openai",
        "--set",
        f"model.base_url={server}",
        "--set",
        "model.name=tiny",
        "--set",
        "synthesis.chunk_size=8",
        "--set",
        "synthesis.max_new_tokens=48",
        "--set",
        "synthesis.n=3",
        "--set",
        "model.max_concurrency=1",
    ]
    subprocess.run(
        [sys.executable, "-m", "scoder.cli", "seeds", "--source", str(code), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoder.cli", "teacher", "--route", "generate", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    log = out / "teacher" / "requests.jsonl"
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and proc.poll() is None
        and (not log.is_file() or len(log.read_text().splitlines()) < 2)
    ):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(log.read_text().splitlines())
    assert 0 < done_before < 8, "the kill should land mid-run"
    rerun = subprocess.run(
        [sys.executable, "-m", "scoder.cli", "teacher", "--route", "generate", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert rerun.returncode == 0, rerun.stderr
    usage = json.loads((out / "manifest.json").read_text())["stages"]["teacher"]["model"]["usage"]
    assert usage["cached_requests"] == done_before and usage["requests"] == 8 - done_before
    assert len(log.read_text().splitlines()) == 8
    samples = read_jsonl(out / "teacher" / "kept.jsonl", DpSample)
    rejected = read_jsonl(out / "teacher" / "dropped.jsonl")
    assert len(samples) + len(rejected) == 8 and len({s.id for s in samples}) == len(samples)
