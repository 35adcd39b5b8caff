"""`scoder plan`: the bill of a config before anything runs, checked against arithmetic written out
by hand from the configs' numbers. No model is loaded: every test here takes well under a second."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scoder import display
from scoder.cli import app
from scoder.eval.benchmarks import BENCHMARKS
from scoder.plan import BENCHMARK_TASKS, THROUGHPUTS, Tokens

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """A table as wide as a terminal's, so that no cell wraps (the runner's console is 80)."""
    monkeypatch.setattr(display.console, "_width", 200)


def plan(*args: str):
    return CliRunner().invoke(app, ["plan", *args])


def plan_json(*args: str) -> dict:
    result = plan(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_paper_recipe_prints_its_bill_as_a_table():
    result = plan(str(CONFIGS / "paper.yaml"), "--gpus", "8", "--cpus-per-node", "16")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for stage in (
        "teacher (D_p)",
        "enhance",
        "rounds 1-3: generation",
        "rounds 1-3: judge",
        "rounds 1-3: sandbox",
        "rounds 1-3: influence",
        "rounds 1-3: training",
        "final dataset: generation",
        "code model (full FT)",
        "eval: generation",
        "total (counted rows)",
    ):
        assert stage in out, stage
    flat = " ".join(out.split())
    assert "wall time:" in flat and "8 GPUs" in flat and "16 CPU cores" in flat
    assert "BENCHMARKS.md: Influence features" in flat  # every figure names its source
    assert "not measured" in flat and "left out of the total" in flat  # the judge, honestly
    assert "API cost of the priced models: $64.00" in flat


def test_the_paper_recipe_totals_equal_the_hand_computation():
    bill = plan_json(str(CONFIGS / "paper.yaml"), "--gpus", "8", "--cpus-per-node", "16")
    hour = 3600
    lora, full, generate, influence = 14_298, 9_532, 4_257, 13_137  # tok/s; full = lora / 1.5
    # configs/paper.yaml: D_p 10,000 - 500 held out = 9,500 training rows, 600 tokens a row, 500
    # an answer; LoRA 3 epochs = 3 checkpoints = M; 3 rounds of 20,000 seeds x M 3 x N 4.
    enhance = 9_500 * 600 * 3 / lora / hour
    sampling = 3 * 20_000 * 3 * 4 * 500 / generate / hour
    # influence at all 3 checkpoints: 20,000 best per seed + the 9,500 D_p training rows
    gradients = 3 * (20_000 + 9_500) * 3 * 600 / influence / hour
    # top half of 20,000 + D_p mixed back in, 3 epochs, in each of 3 rounds
    retraining = 3 * (10_000 + 9_500) * 600 * 3 / lora / hour
    final = 60_000 * 4 * 500 / generate / hour  # from the last checkpoint only
    code_model = 60_000 * 600 * 2 / full / hour  # full fine-tune, 2 epochs
    evaluation = (164 + 378) * 1 * 253 / generate / hour  # HumanEval + MBPP+, n 1
    gpu = enhance + sampling + gradients + retraining + final + code_model + evaluation
    # every candidate is executed: 3 x 240,000 in the rounds, 240,000 final, + the eval answers
    sandbox_per_core = 23.6 / 2
    mbppplus_per_core = 397 / 87 / 2
    cpu = (3 * 240_000 + 240_000 + 164) / sandbox_per_core / hour + 378 / mbppplus_per_core / hour
    assert bill["gpu_hours"] == pytest.approx(gpu, rel=1e-9)
    assert bill["cpu_hours"] == pytest.approx(cpu, rel=1e-9)
    assert bill["gpu_wall_hours"] == pytest.approx(gpu / 8, rel=1e-9)
    assert bill["cpu_wall_hours"] == pytest.approx(cpu / 16, rel=1e-9)
    assert bill["wall_hours"] == pytest.approx(gpu / 8 + cpu / 16, rel=1e-9)
    assert gpu == pytest.approx(39.2, abs=0.05)  # README's table: about 39 GPU hours
    # the teacher's API bill: 10,000 x (560 prompt tokens x $2.5 + 500 answer tokens x $10) / 1M
    assert bill["dollars"] == pytest.approx(10_000 * (560 * 2.5 + 500 * 10.0) / 1e6)
    rows = {r["stage"]: r for r in bill["rows"]}
    judge = rows["rounds 1-3: judge"]
    assert judge["work"] == 3 * 240_000 * (1_000 + 96) and not judge["counted"]
    assert judge["gpu_hours"] is None  # not measured: shown, not guessed
    assert rows["rounds 1-3: sandbox"]["work"] == 3 * 240_000


def test_more_nodes_and_token_options_change_what_they_should():
    base = plan_json(str(CONFIGS / "paper.yaml"), "--cpus-per-node", "16")
    defaults = Tokens()  # the command line's defaults are the module's
    assert base["tokens"]["per_sample"] == defaults.per_sample == 600
    assert base["tokens"]["completion"] == defaults.completion == 500
    wider = plan_json(str(CONFIGS / "paper.yaml"), "--cpus-per-node", "16", "--nodes", "2")
    assert wider["gpu_hours"] == pytest.approx(base["gpu_hours"])
    assert wider["gpu_wall_hours"] == pytest.approx(base["gpu_wall_hours"] / 2)
    # the local pool runs the sandbox on one node; Ray spreads it over both
    assert wider["cpu_wall_hours"] == pytest.approx(base["cpu_wall_hours"])
    on_ray = plan_json(
        str(CONFIGS / "paper.yaml"),
        "--cpus-per-node",
        "16",
        "--nodes",
        "2",
        "-s",
        "executor.kind=ray",
    )
    assert on_ray["cpu_wall_hours"] == pytest.approx(base["cpu_wall_hours"] / 2)
    shorter = plan_json(str(CONFIGS / "paper.yaml"), "--completion-tokens", "250")
    rows = {r["stage"]: r["work"] for r in shorter["rows"]}
    assert rows["final dataset: generation"] == 60_000 * 4 * 250
    # synthesis.max_new_tokens bounds an answer: 2,000 expected tokens count as its 768
    capped = plan_json(str(CONFIGS / "paper.yaml"), "--completion-tokens", "2000")
    rows = {r["stage"]: r["work"] for r in capped["rows"]}
    assert rows["final dataset: generation"] == 60_000 * 4 * 768


def test_the_shipped_demo_and_baseline_configs_plan(tmp_path):
    run_dir = tmp_path / "run"
    demo = plan_json(str(CONFIGS / "demo.yaml"), "--set", f"run_dir={run_dir}")
    rows = {r["stage"]: r["work"] for r in demo["rows"]}
    # 4 D_p rows / (batch 1 x 2 accumulated) = 2 steps, a checkpoint per step: M = 2
    assert rows["round 1: generation"] == 8 * 2 * 1 * 256
    assert rows["round 1: training"] == (3 + 4) * 600 * 1  # top-3 + D_p, one epoch
    assert rows["final dataset: generation"] == 24 * 2 * 256
    assert not run_dir.exists()  # a plan touches no run directory
    baseline = plan(str(CONFIGS / "oss-instruct-baseline.yaml"))
    assert baseline.exit_code == 0, baseline.output
    assert "final dataset: generation" in baseline.stdout and "enhance" not in baseline.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "0"], "--gpus (GPUs per node) must be at least 1 (got 0)"),
        (["--set", "loop.rounds=-1"], "loop.rounds: Input should be greater than or equal to 0"),
    ],
)
def test_bad_input_is_one_clear_message(args, message):
    result = plan(str(CONFIGS / "paper.yaml"), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


def test_a_bad_config_file_is_one_clear_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop:\n  roundz: 3\n")
    result = plan(str(bad))
    assert result.exit_code == 2
    assert "loop.roundz" in result.stderr and "Traceback" not in result.output
    missing = plan(str(tmp_path / "none.yaml"))
    assert missing.exit_code == 2 and "config file not found" in missing.stderr


def test_the_figures_are_the_documented_ones():
    benchmarks = (REPO / "BENCHMARKS.md").read_text()
    for figure in ("| 14,298 |", "**13,137**", "23.6 prog/s", "MBPP+ 397 tasks 80–87 s"):
        assert figure in benchmarks
    assert THROUGHPUTS["lora_sft"].value == 14_298 and THROUGHPUTS["influence"].value == 13_137
    assert not THROUGHPUTS["full_sft"].measured  # extrapolated, and says so
    for figure in THROUGHPUTS.values():
        assert figure.source.split(":")[0] in ("BENCHMARKS.md", "DESIGN.md", "README.md")
    assert set(BENCHMARK_TASKS) == set(BENCHMARKS)
