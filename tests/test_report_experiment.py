"""The report of a `scoder experiment` run: RUN/experiment.json shown as a table of each arm's
metrics over seeds against random@k, their costs, and a figure; an unreadable file is one line."""

from __future__ import annotations

import base64
import json
import re
import statistics
from pathlib import Path

import pytest

from scoder.report import plots, run_facts, write_report
from scoder.report.experiment import ExperimentFacts, read_experiment

METRICS = {
    "heldout_dp_loss": {"label": "held-out D_p loss", "better": "lower"},
    "parse_rate": {"label": "next round: parsed", "better": "higher"},
    "pass_rate": {"label": "next round: own tests pass", "better": "higher"},
    "judge_score": {"label": "next round: judge score (0-9)", "better": "higher"},
    "pass_at_1/humaneval": {"label": "code model pass@1 (humaneval)", "better": "higher"},
}
ARMS = ["influence", "rds", "judge", "random", "passed_random", "all"]
SEEDS = [1, 2, 3]
# arm -> seed -> metric -> value (pass@1 nowhere: no benchmark configured)
VALUES = {
    "influence": {
        1: {"heldout_dp_loss": 0.83, "parse_rate": 0.5, "pass_rate": 0.10, "judge_score": 6.2},
        2: {"heldout_dp_loss": 0.85, "parse_rate": 0.625, "pass_rate": 0.125, "judge_score": 6.0},
        3: {"heldout_dp_loss": 0.84, "parse_rate": 0.5625, "pass_rate": 0.0625, "judge_score": 6.4},
    },
    "rds": {
        1: {"heldout_dp_loss": 0.90, "parse_rate": 0.4375, "pass_rate": 0.0625, "judge_score": 5.1},
        2: {"heldout_dp_loss": 0.92, "parse_rate": 0.375, "pass_rate": 0.0, "judge_score": 5.3},
        3: {"heldout_dp_loss": 0.91, "parse_rate": 0.5, "pass_rate": 0.0625, "judge_score": 5.0},
    },
    "judge": {
        1: {"heldout_dp_loss": 0.88, "parse_rate": 0.5, "pass_rate": 0.125, "judge_score": 6.6},
        2: {"heldout_dp_loss": 0.87, "parse_rate": 0.5625, "pass_rate": 0.1875, "judge_score": 6.9},
        3: {"heldout_dp_loss": 0.89, "parse_rate": 0.5, "pass_rate": 0.125, "judge_score": None},
    },
    "random": {
        1: {"heldout_dp_loss": 0.86, "parse_rate": 0.4375, "pass_rate": 0.0625, "judge_score": 5.8},
        2: {"heldout_dp_loss": 0.84, "parse_rate": 0.5, "pass_rate": 0.125, "judge_score": 6.1},
        3: {"heldout_dp_loss": 0.87, "parse_rate": 0.5625, "pass_rate": 0.0625, "judge_score": 5.9},
    },
    "passed_random": {
        1: {"heldout_dp_loss": 0.85, "parse_rate": 0.5, "pass_rate": 0.125, "judge_score": 6.0},
        2: {"heldout_dp_loss": 0.86, "parse_rate": 0.4375, "pass_rate": 0.125, "judge_score": 6.2},
        3: {"heldout_dp_loss": 0.85, "parse_rate": 0.5, "pass_rate": 0.0625, "judge_score": 6.1},
    },
    "all": {  # one seed only: its std is null
        1: {"heldout_dp_loss": 0.80, "parse_rate": 0.5, "pass_rate": 0.125, "judge_score": 6.3},
    },
}
COSTS = {
    "influence": {
        "seconds": 41.2,
        "tokens": 52000,
        "what": "LoRA gradient features of pool + D_p at 2 checkpoints",
    },
    "rds": {"seconds": 7.5, "tokens": 52000, "what": "hidden-state features of pool + D_p"},
    "judge": {"seconds": 0.0, "tokens": 0, "what": "the judge's scores, already paid for"},
    "random": {"seconds": 0.0, "tokens": 0, "what": "nothing"},
    "passed_random": {"seconds": 0.0, "tokens": 0, "what": "the execution, already paid for"},
    "all": {"seconds": 0.0, "tokens": 0, "what": "nothing (k = pool)"},
}


def _spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def _versus(mine: dict, random: dict, better: str) -> str:
    if mine["max"] >= random["min"] and random["max"] >= mine["min"]:
        return "within spread"
    lower = mine["max"] < random["min"]
    return "better" if lower == (better == "lower") else "worse"


def experiment() -> dict:
    """experiment.json as `scoder experiment` writes it (summaries computed from the runs)."""
    runs = [
        {
            "arm": arm,
            "seed": seed,
            "selected": 48 if arm == "all" else 12,
            "metrics": metrics,
            "files": {"selection": f"experiment/{arm}/seed-{seed}/select/kept.jsonl"},
        }
        for arm, by_seed in VALUES.items()
        for seed, metrics in by_seed.items()
    ]
    summaries = {
        arm: {
            m: _spread(vs)
            for m in METRICS
            if (vs := [v[m] for v in by_seed.values() if v.get(m) is not None])
        }
        for arm, by_seed in VALUES.items()
    }
    arms = {
        arm: {
            "metrics": summaries[arm],
            "cost": COSTS[arm],
            "versus_random": None
            if arm == "random"
            else {
                m: _versus(s, summaries["random"][m], METRICS[m]["better"])
                for m, s in summaries[arm].items()
            },
        }
        for arm in ARMS
    }
    return {
        "version": "experiment/1",
        "design": {
            "arms": ARMS,
            "seeds": SEEDS,
            "k": 12,
            "pool": 48,
            "next_seeds": 16,
            "heldout_dp": 8,
            "model": "tiny/model",
        },
        "shared": {"pool_candidates": 48, "sampling_s": 12.3, "execution_s": 4.0, "judge_s": 30.1},
        "metrics": METRICS,
        "runs": runs,
        "arms": arms,
        "findings": [
            "On held-out D_p loss no arm is outside random@k's seed spread <but rds>.",
            "rds is worse than random@k on the judge score.",
        ],
    }


def experiment_run(path: Path, contents: str | None) -> Path:
    """A run directory as `scoder experiment` leaves it: a manifest, the ledger, rounds/0 and
    rounds/1 (the shared pool's stages), experiment/..., and no summary.json and no final/."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps({"config": {"run_dir": str(path)}}))
    (path / "ledger.jsonl").write_text("")
    (path / "rounds" / "0").mkdir(parents=True)
    synth = {"synthesize": {"duration_s": 12.3, "counts": {"seeds": 16, "generated": 64}}}
    (path / "rounds" / "1").mkdir()
    (path / "rounds" / "1" / "manifest.json").write_text(json.dumps({"stages": synth}))
    kept = path / "experiment" / "influence" / "seed-1" / "select"
    kept.mkdir(parents=True)
    (kept / "kept.jsonl").write_text("")
    if contents is not None:
        (path / "experiment.json").write_text(contents)
    return path


def _row(page: str, arm: str) -> str:
    (row,) = re.findall(rf"<tr><td>{re.escape(arm)}</td>.*?</tr>", page)
    return row


def test_the_page_shows_each_arm_over_seeds_against_random(tmp_path):
    data = experiment()
    run = experiment_run(tmp_path / "run", json.dumps(data))
    page = write_report(run).read_text()
    assert 'id="experiment">Selection experiment</h2>' in page
    section = page.split('id="experiment"')[1].split("<h2")[0]

    # one row per arm, in the design's order
    rows = re.findall(r"<tr><td>([a-z_]+)</td>", section)
    assert rows == ARMS
    header = re.search(r"<tr>(<th>.*?)</tr>", section).group(1)
    assert re.findall(r"<th>(.*?)</th>", header) == [
        "arm",
        *(m["label"] for m in METRICS.values()),
        "selection seconds",
        "tokens",
        "what it costs",
    ]
    # mean ± std of the file's numbers, marked by how they compare to random@k
    loss = data["arms"]["influence"]["metrics"]["heldout_dp_loss"]
    assert f"{loss['mean']:.3f} ± {loss['std']:.3f}" == "0.840 ± 0.010"
    influence = _row(section, "influence")
    assert 'title="within the seed spread of random@k">0.840 ± 0.010 ≈</span>' in influence
    rds = _row(section, "rds")
    judge = data["arms"]["rds"]["metrics"]["judge_score"]
    assert data["arms"]["rds"]["versus_random"]["judge_score"] == "worse"
    assert f"{judge['mean']:.3f} ± {judge['std']:.3f} ▼" in rds
    assert data["arms"]["judge"]["versus_random"]["judge_score"] == "better"
    assert "▲" in _row(section, "judge")
    assert "≈" not in _row(section, "random") and "▲" not in _row(section, "random")
    # one seed: the mean alone; a metric no run measured: a dash
    assert '">0.800 ▲</span>' in _row(section, "all")
    assert influence.count('<span class="measured">—</span>') == 1  # pass@1
    # the costs, and what was paid for
    assert '<td class="n">41.2</td><td class="n">52000</td>' in influence
    assert "LoRA gradient features of pool + D_p at 2 checkpoints" in influence
    assert "≈: within the seed spread of random@k (the ranges over seeds overlap)" in section
    # the design and the findings (escaped)
    for part in ("48 candidates", "k = 12", "(1, 2, 3)", "8 held-out D_p rows", "16 fresh seeds"):
        assert part in section, part
    assert "<li>On held-out D_p loss no arm is outside random@k&#x27;s seed spread" in section
    assert "&lt;but rds&gt;" in section
    # the figure: an embedded PNG
    (src,) = re.findall(r'<img src="([^"]+)" alt="each arm&#x27;s metrics over seeds">', section)
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    # the rest of the page still renders from what the run has: round 1's pool, no final
    assert "Round 1" in page and "Final dataset" not in page
    facts = json.loads(
        re.search(r'id="scoder-facts">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</")
    )
    assert facts["experiment"]["arms"]["influence"]["cost"]["seconds"] == 41.2


def test_the_figure_has_a_panel_per_measured_metric_only(tmp_path):
    facts = read_experiment(experiment_run(tmp_path / "run", json.dumps(experiment())))
    assert isinstance(facts, ExperimentFacts)
    assert facts.measured() == ["heldout_dp_loss", "parse_rate", "pass_rate", "judge_score"]
    assert facts.values("judge", "judge_score") == [(1, 6.6), (2, 6.9)]
    assert plots.experiment(facts).startswith("data:image/png;base64,")
    data = experiment()
    for run in data["runs"]:
        run["metrics"] = {}
    data["arms"] = {}
    bare = ExperimentFacts.model_validate(data)
    assert bare.measured() == [] and plots.experiment(bare) is None


def test_without_arm_summaries_the_runs_give_mean_and_std(tmp_path):
    data = experiment()
    data["arms"] = {}
    facts = ExperimentFacts.model_validate(data)
    mean, std = facts.mean_std("influence", "heldout_dp_loss")
    assert round(mean, 6) == 0.84 and round(std, 6) == 0.01
    assert facts.verdict("influence", "heldout_dp_loss") is None


@pytest.mark.parametrize(
    ("contents", "why"),
    [
        ('{"version": "experiment/1", "design": ', "it is not JSON"),
        ("[1, 2]", "top level: Input should be a valid dictionary"),
        ('{"version": "experiment/0"}', "its version is 'experiment/0'"),
        (
            json.dumps({**experiment(), "design": {"seeds": [1]}, "runs": [{"arm": "x"}]}),
            "design.arms: Field required",
        ),
    ],
)
def test_an_unreadable_experiment_json_is_one_line_on_the_page(tmp_path, contents, why):
    run = experiment_run(tmp_path / "run", contents)
    page = write_report(run).read_text()
    section = page.split('id="experiment">Selection experiment</h2>')[1].split("<h2")[0]
    (line,) = re.findall(r"<p>(.*?)</p>", section)
    assert line.startswith(f"{run / 'experiment.json'} could not be read: ")
    assert why in line.replace("&#x27;", "'")
    assert "<table" not in section and "<img" not in section


def test_a_run_without_experiment_json_has_no_such_section(tmp_path):
    run = experiment_run(tmp_path / "run", None)
    assert run_facts(run).experiment is None
    assert "Selection experiment" not in write_report(run).read_text()


def test_a_run_directory_with_only_a_manifest_renders(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    facts = run_facts(tmp_path)
    assert facts.rounds == [] and facts.final is None and facts.experiment is None
    assert "no rounds" in write_report(tmp_path).read_text()
