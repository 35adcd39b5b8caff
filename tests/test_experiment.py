"""`scoder experiment` end to end on the tiny model that answers like a synthesizer and a judge:
2 arms x 2 seeds share one pool and one computation of features (read from the manifests), the
table's numbers are those in each arm's own files, a re-run resumes everything, and the report
shows the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from loop_helpers import write_config

from scoder.config import load_config
from scoder.errors import ScoderError
from scoder.loop import plan_experiment
from scoder.loop.experiment import spread, versus
from scoder.store import read_jsonl

ARMS, SEEDS = ["influence", "random"], [1, 2]


def experiment(config: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "scoder.cli", "experiment", str(config), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def stage(run: Path, where: str, name: str) -> dict:
    return json.loads((run / where / "manifest.json").read_text())["stages"][name]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, parrot_model_dir):
    tmp = tmp_path_factory.mktemp("experiment")
    config = write_config(
        tmp,
        parrot_model_dir,
        experiment={"arms": ARMS, "seeds": SEEDS, "next_seeds": 1},
        final={"samples": 0},
        code_model={
            "enabled": True,
            "train": {"epochs": 1, "lora_targets": ["q_proj", "v_proj"], "template": "plain"},
            "eval_benchmarks": ["humaneval"],
        },
        eval={"limit": 2, "max_new_tokens": 16},
    )
    out = experiment(config)
    return config, tmp / "run", out


def test_arms_share_one_pool_and_one_computation_of_features(finished):
    _, run, _ = finished
    pool = run / "rounds/1/score/kept.jsonl"
    signal = stage(run, "experiment/signals/influence", "select")
    assert signal["counts"]["features_reused"] == 0
    cost = signal["selection_cost"]
    assert cost["signal"] == "influence" and cost["tokens"] > 0 and cost["seconds"] > 0
    rows = len(read_jsonl(pool)) + len(read_jsonl(run / "dp/train.jsonl"))
    checkpoints = len(signal["checkpoints"])
    for arm in ARMS:
        for seed in SEEDS:
            where = f"experiment/{arm}/seed-{seed}"
            select = stage(run, where, "select")
            assert select["counts"]["candidates"] == len(read_jsonl(pool))
            if arm == "influence":  # every feature read from the round's store, none computed
                assert select["counts"]["features_reused"] == rows * checkpoints
                assert select["selection_cost"]["features_reused"] == rows * checkpoints
    # the one pool: every arm's selection was made from the same file, sampled once
    ledger = json.loads((run / "loop.json").read_text())["steps"]
    assert "round-1/synthesize" in ledger and "round-2/synthesize" not in ledger
    for name in ledger:
        if name.endswith("/select"):
            assert name.startswith(("experiment/", "round-1/"))


def test_the_table_s_numbers_are_the_arms_own(finished):
    _, run, out = finished
    table = json.loads((run / "experiment.json").read_text())
    assert table["design"]["arms"] == ARMS and table["design"]["seeds"] == SEEDS
    assert table["design"]["k"] == 2 and table["design"]["heldout_dp"] == 1
    ledger = json.loads((run / "loop.json").read_text())["steps"]
    assert len(table["runs"]) == len(ARMS) * len(SEEDS)
    for r in table["runs"]:
        where = f"experiment/{r['arm']}/seed-{r['seed']}"
        kept = read_jsonl(run / where / "select/kept.jsonl")
        assert r["selected"] == len(kept) == 2
        trained = ledger[f"{where}/train"]["result"]
        assert r["metrics"]["heldout_dp_loss"] == trained["heldout_losses"][-1]
        sampled = stage(run, f"{where}/next", "synthesize")["counts"]
        scored = read_jsonl(run / where / "next/score/scored.jsonl")
        generated = sampled["accepted"] + sampled["rejected"]
        assert r["metrics"]["parse_rate"] == pytest.approx(sampled["accepted"] / generated)
        passed = sum(1 for c in scored if c["execution"]["status"] == "passed")
        assert r["metrics"]["pass_rate"] == pytest.approx(passed / len(scored))
        judged = [c["judge"]["expected"] or c["judge"]["scores"] for c in scored]
        means = [sum(v.values()) / len(v) for v in judged if v]
        assert r["metrics"]["judge_score"] == pytest.approx(sum(means) / len(means))
        # a code model tuned on the arm's selection, evaluated: its own results file
        results = json.loads((run / where / "eval/humaneval/results.json").read_text())
        pass_at_1 = next(iter(results["pass_at_k"].values()))["pass@1"]
        assert r["metrics"]["pass_at_1/humaneval"] == pass_at_1
    for arm in ARMS:
        mine = [r["metrics"]["heldout_dp_loss"] for r in table["runs"] if r["arm"] == arm]
        summary = table["arms"][arm]["metrics"]["heldout_dp_loss"]
        assert summary["values"] == mine and summary["mean"] == pytest.approx(sum(mine) / 2)
    assert table["arms"]["random"]["cost"]["seconds"] == 0.0
    assert table["arms"]["influence"]["cost"]["tokens"] > 0
    assert table["arms"]["random"]["versus_random"] is None
    assert set(table["arms"]["influence"]["versus_random"].values()) <= {
        "better",
        "worse",
        "within spread",
        None,
    }
    assert table["findings"]
    assert "scoder experiment" in out and "influence" in out
    page = (run / "report.html").read_text()
    assert "Selection experiment" in page and "could not be read" not in page
    loss = table["arms"]["influence"]["metrics"]["heldout_dp_loss"]
    assert f"{loss['mean']:.3f}" in page  # the page rounds a tiny std to 3 figures


def test_a_rerun_resumes_every_step_and_writes_the_same_table(finished):
    config, run, _ = finished
    before = (run / "experiment.json").read_bytes()
    assert {d.action for d in plan_experiment(load_config(config))} == {"reuse"}
    experiment(config)
    assert (run / "experiment.json").read_bytes() == before


def test_spread_and_standing_against_random():
    assert spread([1.0, 3.0]) == {
        "mean": 2.0,
        "std": pytest.approx(2**0.5),
        "min": 1.0,
        "max": 3.0,
        "n": 2,
        "values": [1.0, 3.0],
    }
    low, high, mid = spread([0.1, 0.2]), spread([0.5, 0.6]), spread([0.15, 0.55])
    assert versus(low, high, "lower") == "better" and versus(low, high, "higher") == "worse"
    assert versus(mid, high, "lower") == "within spread"
    assert versus(spread([0.1]), high, "lower") is None  # one seed: no spread to speak of


def test_an_experiment_without_held_out_dp_is_refused_before_any_work(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, loop={"rounds": 1, "dp_heldout": 0})
    with pytest.raises(ScoderError, match="dp_heldout"):
        plan_experiment(load_config(config))
    assert not (tmp_path / "run").exists()
