"""`scoder run` end to end on a tiny model that has learned to answer like a synthesizer and a
judge: complete round directories, consistent counts, provenance, a dataset `datasets` loads;
kill-and-resume at stage boundaries and mid-stage gives the same final dataset; a config change
re-runs exactly the steps it reaches (and the dry run says so); a moved run directory resumes
from its own files; one run at a time per directory; the ablation switches change the selection
as they should."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from loop_helpers import (
    ANSWER_SOLUTION,
    SEED_FILES,
    write_config,
)

from scoder.config import load_config
from scoder.errors import ScoderError
from scoder.loop import RoundSummary, plan_loop, run_loop, stop_reason
from scoder.templates import PLAIN_TEMPLATE_ID


def scoder_run(config: Path, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scoder.cli", "run", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def steps(run: Path) -> dict:
    return json.loads((run / "loop.json").read_text())["steps"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(root: Path, tops: list[str]) -> dict[str, tuple[int, bytes]]:
    """Every file under `tops`: its modification time and its bytes."""
    out = {}
    for top in tops:
        here = root / top
        for path in sorted(here.rglob("*") if here.is_dir() else [here]):
            if path.is_file():
                out[str(path.relative_to(root))] = (path.stat().st_mtime_ns, path.read_bytes())
    return out


def copy_run(src: Path, dst: Path) -> Path:
    """A finished run directory copied elsewhere (times kept), as a user moving it would."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def variant(original: Path, run: Path, tmp_path: Path, **changes) -> Path:
    """The config of the run that made `original`, moved to `run`, with some values changed."""
    config = yaml.safe_load((original.parent / "config.yaml").read_text())
    config["run_dir"] = str(run)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        config[section][field] = value
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def planned(config: Path, *sets: str) -> dict[str, tuple[str, str]]:
    return {d.step: (d.action, d.why) for d in plan_loop(load_config(config, list(sets)))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, parrot_model_dir):
    tmp = tmp_path_factory.mktemp("loop-a")
    (tmp / "output.txt").write_text(finish(scoder_run(write_config(tmp, parrot_model_dir))))
    return tmp / "run"


def test_a_whole_run_is_complete_consistent_and_loadable(uninterrupted):
    import datasets

    from scoder import decontaminate, score, select, synthesize

    run = uninterrupted
    ledger = steps(run)
    for step in ("seeds", "dp", "round-0/train", "round-1/summary", "final/export"):
        assert ledger[step]["status"] == "done", step
    r1 = run / "rounds" / "1"
    for name in (
        "seeds.jsonl",
        "synthesize/kept.jsonl",
        "synthesize/dropped.jsonl",
        "decontaminate/kept.jsonl",
        "score/scored.jsonl",
        "score/kept.jsonl",
        "score/dropped.jsonl",
        "select/kept.jsonl",
        "select/dropped.jsonl",
        "select/baselines/random_at_k.jsonl",
        "select/baselines/judge_top_at_k.jsonl",
        "summary.json",
        "train/checkpoints/epoch-2/adapter_model.safetensors",
    ):
        assert (r1 / name).is_file(), name
    for copy in ("pool.jsonl", "best.jsonl", "selected.jsonl"):  # the loop copies nothing
        assert not (r1 / copy).exists(), copy
    summary = json.loads((r1 / "summary.json").read_text())
    assert len(summary["sampled_from"]) == 2  # M = both enhance checkpoints
    # counts add up stage by stage
    synth = json.loads((r1 / "manifest.json").read_text())["stages"]["synthesize"]["counts"]
    assert synth["generated"] == synth["accepted"] + synth["rejected"] == 3 * 2 * 2
    decon = json.loads((r1 / "decontaminate" / "summary.json").read_text())
    pool = lines(r1 / "decontaminate" / "kept.jsonl")
    assert decon["input"] == synth["accepted"] == len(pool) + decon["dropped"]
    scored = json.loads((r1 / "manifest.json").read_text())["stages"]["score"]["counts"]
    assert scored["candidates"] == len(pool) and len(lines(r1 / "score" / "kept.jsonl")) == 3
    assert summary["generated"] == synth["generated"] and summary["best_per_seed"] == 3
    assert summary["selected"] == 2 == len(lines(r1 / "select" / "kept.jsonl"))
    assert summary["heldout_dp_loss"]["influence"] is not None
    # every drop names the stage that made it and one of the reasons that stage declares
    for module in (synthesize, decontaminate, score, select):
        for row in lines(r1 / module.STAGE / "dropped.jsonl"):
            assert row["drop"]["stage"] == module.STAGE, module.STAGE
            assert row["drop"]["reason"] in module.REASONS.reasons, row["drop"]
    # the ledger holds paths relative to the run directory only
    assert str(run.resolve()) not in (run / "loop.json").read_text()
    assert ledger["round-1/train"]["result"]["checkpoints"][0].startswith("rounds/1/train/")
    # the final dataset: provenance on every record, loadable with datasets
    rows = lines(run / "final" / "dataset.jsonl")
    assert 1 <= len(rows) <= 2  # one per final seed whose sample the (tiny) judge could score
    for row in rows:
        assert row["seed_location"] and row["model_digest"].startswith("sha256:")
        assert row["round"] == 2 and row["checkpoint"] == "epoch-2"
        assert row["solution"] and row["tests"] and row["tests_passed"] is True
    table = datasets.load_dataset(
        "parquet", data_files=str(run / "final" / "dataset.parquet"), split="train"
    )
    assert table.num_rows == len(rows) and table[0]["id"] == rows[0]["id"]
    card = (run / "final" / "README.md").read_text()
    assert "## Sources" in card and "CC-BY" not in card.split("## License")[1]
    # a second run of the same config reuses every step
    assert {action for action, _ in planned(run.parent / "config.yaml").values()} == {"reuse"}


# Every step that does work, in the order a run reaches them: the kill trials land one SIGKILL
# inside each (seeds, teacher, enhance training, sampling, scoring, influence, round training,
# final sampling and scoring, the code model's training, its evaluation).
KILL_STEPS = [
    "seeds",
    "dp",
    "round-0/train",
    "round-1/synthesize",
    "round-1/score",
    "round-1/select",
    "round-1/train",
    "final/synthesize",
    "final/score",
    "code-model",
    "eval/humaneval",
]
# What an interrupted run must reproduce byte for byte (records carry no timings).
COMPARED = [
    "final/dataset.jsonl",
    "rounds/1/score/kept.jsonl",
    "rounds/1/select/kept.jsonl",
    "rounds/1/select/dropped.jsonl",
    "eval/humaneval/samples.jsonl",
]


def write_full_config(tmp_path: Path, model_dir: Path) -> Path:
    """write_config's run, with the code model tuned on its dataset and evaluated (2 tasks)."""
    code_model = {
        "enabled": True,
        "train": {"epochs": 1, "lora_targets": ["q_proj", "v_proj"], "template": "plain"},
        "eval_benchmarks": ["humaneval"],
    }
    return write_config(
        tmp_path, model_dir, code_model=code_model, eval={"limit": 2, "max_new_tokens": 16}
    )


def status_of(run: Path) -> dict[str, str]:
    try:
        return {name: entry["status"] for name, entry in steps(run).items()}
    except (OSError, ValueError, KeyError):
        return {}


def kill_chain(config: Path, run: Path, seconds: dict[str, float], rng) -> list[dict]:
    """One run killed with SIGKILL once inside each of KILL_STEPS, in order, at a random point
    of the step (uniform over its uninterrupted duration), each time resumed by the same
    command; then run to the end. Returns where each kill aimed and where it landed (the step
    the ledger shows cut short)."""
    landings = []
    for step in KILL_STEPS:
        proc = scoder_run(config)
        deadline = time.time() + 600
        while status_of(run).get(step) not in ("started", "done") and proc.poll() is None:
            assert time.time() < deadline, f"{step} never started"
            time.sleep(0.02)
        if status_of(run).get(step) == "started":
            time.sleep(rng.uniform(0, 0.9) * seconds[step])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cut = [name for name, state in status_of(run).items() if state == "started"]
        landings.append({"aimed": step, "landed": cut[0] if cut else "between steps"})
    finish(scoder_run(config))
    return landings


@pytest.fixture(scope="module")
def uninterrupted_full(tmp_path_factory, parrot_model_dir):
    tmp = tmp_path_factory.mktemp("loop-full")
    finish(scoder_run(write_full_config(tmp, parrot_model_dir)))
    return tmp / "run"


def test_kill_trials_in_every_stage_resume_to_the_same_bytes(
    tmp_path, parrot_model_dir, uninterrupted_full
):
    """The kill-trial harness (bench/bench_kill_trials.py runs more chains: SCODER_KILL_CHAINS,
    SCODER_KILL_SEED, SCODER_KILL_REPORT). Each chain kills one run once inside every stage;
    its final dataset, every round's selection and the evaluation's answers are then the same
    bytes as an uninterrupted run's: no sample lost, none duplicated."""
    import random

    seconds = {name: entry["seconds"] for name, entry in steps(uninterrupted_full).items()}
    chains = int(os.environ.get("SCODER_KILL_CHAINS", "1"))
    rng = random.Random(int(os.environ.get("SCODER_KILL_SEED", "0")))
    config = write_full_config(tmp_path, parrot_model_dir)
    run = tmp_path / "run"
    report = []
    for chain in range(chains):
        shutil.rmtree(run, ignore_errors=True)
        landings = kill_chain(config, run, seconds, rng)
        differ = [
            name
            for name in COMPARED
            if (run / name).read_bytes() != (uninterrupted_full / name).read_bytes()
        ]
        report.append({"chain": chain, "landings": landings, "differ": differ})
        if chain == 0:
            # the killed run's lock was left behind, naming it; each next run took it over
            assert json.loads((run / ".lock").read_text())["command"] == "scoder run"
    if os.environ.get("SCODER_KILL_REPORT"):
        Path(os.environ["SCODER_KILL_REPORT"]).write_text(json.dumps(report, indent=1))
    assert all(not chain["differ"] for chain in report), report
    # most kills land inside the step they aim at (a short step may be over before the kill)
    landed = [k["aimed"] == k["landed"] for chain in report for k in chain["landings"]]
    assert sum(landed) >= len(landed) // 2, report


def test_one_run_at_a_time_in_a_directory(tmp_path, parrot_model_dir):
    config = write_config(tmp_path, parrot_model_dir)
    run = tmp_path / "run"
    proc = scoder_run(config)
    deadline = time.time() + 300
    while not (run / ".lock").is_file() or not status_of(run):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, "-m", "scoder.cli", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert second.returncode == 2, second.stderr
    assert f"is in use by `scoder run` (pid {proc.pid}" in " ".join(second.stderr.split())
    assert "Traceback" not in second.stderr


UPSTREAM = ["seeds", "decontaminate", "teacher", "dp", "rounds"]


def test_a_downstream_change_reruns_only_the_final_steps_of_a_moved_run(
    tmp_path, parrot_model_dir, uninterrupted
):
    """final.samples and final.n after a finished run, in a copy of its directory: the dry run
    says the final steps re-run and why; the run re-runs them (sampling with the checkpoints of
    the copy, not of the original; N samples per seed, the best per seed a row) and leaves every
    earlier output as it was, bytes and times."""
    run = copy_run(uninterrupted, tmp_path / "moved")
    config = variant(uninterrupted, run, tmp_path, final__samples=3, final__n=2)
    plan = planned(config)
    rerun = {step for step, (action, _) in plan.items() if action != "reuse"}
    assert rerun == {
        "final/seeds",
        "final/synthesize",
        "final/decontaminate",
        "final/score",
        "final/export",
    }
    assert plan["final/seeds"] == ("re-run", "count: 2 -> 3")
    assert plan["final/synthesize"] == ("re-run", "final/seeds re-runs")
    before = snapshot(run, UPSTREAM)
    out = finish(scoder_run(config))
    assert "re-run final/seeds count: 2 -> 3" in " ".join(out.split())
    assert snapshot(run, UPSTREAM) == before
    sampled = json.loads((run / "final" / "manifest.json").read_text())["stages"]["synthesize"]
    (checkpoint,) = (
        sampled["info_checkpoints"]
        if "info_checkpoints" in sampled
        else (sampled["checkpoints"].values())
    )
    # stored relative to the manifest's directory: the copy's own checkpoint
    assert not Path(checkpoint).is_absolute()
    assert (run / "final" / checkpoint).resolve().is_relative_to(run.resolve())
    assert (run / "final" / checkpoint).is_dir()
    for manifest in run.rglob("manifest.json"):
        stages = json.dumps(json.loads(manifest.read_text())["stages"])
        assert str(uninterrupted.resolve()) not in stages, manifest
    rows = lines(run / "final" / "dataset.jsonl")
    seeds = {r["seed"] for r in rows}
    assert 1 <= len(seeds) <= 3 and len(lines(run / "final" / "seeds.jsonl")) == 3
    assert len(rows) == len(seeds)  # one row per seed, out of its two samples
    sampled = lines(run / "final" / "synthesize" / "kept.jsonl")
    sampled += lines(run / "final" / "synthesize" / "dropped.jsonl")
    assert sorted(r["sample_index"] for r in sampled) == [0, 0, 0, 1, 1, 1]


def test_a_local_run_moved_to_ray_reuses_every_step_and_reruns_the_same_bytes(
    tmp_path, uninterrupted
):
    """Where work runs is no part of what it is: with executor.kind ray a finished local run
    reuses every step; after a change, the final steps re-run on Ray (sampling and judging in
    actors, the sandbox as tasks) and write what the same re-run writes locally, byte for byte."""
    pytest.importorskip("ray")
    original = yaml.safe_load((uninterrupted.parent / "config.yaml").read_text())

    def config_for(run: Path, **sections) -> Path:
        path = tmp_path / f"{run.name}.yaml"
        path.write_text(yaml.safe_dump({**original, "run_dir": str(run), **sections}))
        return path

    # the sandbox as Ray tasks, the synthesizer and the judge in two Ray actors
    on_ray = {"executor": {"kind": "ray", "num_cpus": 2, "generation_actors": 2}}
    moved = config_for(copy_run(uninterrupted, tmp_path / "ray"), **on_ray)
    assert {action for action, _ in planned(moved).values()} == {"reuse"}
    more = {"final": {**original["final"], "samples": 3}}
    finish(scoder_run(config_for(tmp_path / "ray", **on_ray, **more)))
    finish(scoder_run(config_for(copy_run(uninterrupted, tmp_path / "local"), **more)))
    assert "parallel stages run on Ray" in (tmp_path / "ray" / "log.txt").read_text()
    stages = json.loads((tmp_path / "ray" / "final" / "manifest.json").read_text())["stages"]
    assert (
        stages["synthesize"]["model"]["ray_actors"] == stages["score"]["judge"]["ray_actors"] == 2
    )
    for made in ("final/dataset.jsonl", "final/score/kept.jsonl", "final/score/dropped.jsonl"):
        assert (tmp_path / "ray" / made).read_bytes() == (tmp_path / "local" / made).read_bytes()
    assert lines(tmp_path / "ray" / "final/dataset.jsonl")


def test_the_dry_run_command_prints_the_plan_as_given_and_writes_nothing(tmp_path, uninterrupted):
    """`scoder run --dry-run` after a change: each step's action and why, bracketed values
    printed as they are (never read as markup), and not a byte written to the run directory."""
    config = variant(uninterrupted, uninterrupted, tmp_path, final__license="[/x]")
    before = snapshot(uninterrupted, ["."])
    out = " ".join(finish(scoder_run(config, "--dry-run")).split())
    assert "final/export │ re-run │ final.license: None -> '[/x]'" in out
    assert "round-1/train │ reuse" in out and "final/score │ reuse" in out
    assert snapshot(uninterrupted, ["."]) == before


def test_an_upstream_change_reruns_its_round_and_what_follows_and_nothing_before(
    tmp_path, parrot_model_dir, uninterrupted
):
    run = copy_run(uninterrupted, tmp_path / "run")
    config = variant(uninterrupted, run, tmp_path, synthesis__temperature=0.5)
    plan = planned(config)
    reused = {step for step, (action, _) in plan.items() if action == "reuse"}
    assert reused == {"seeds", "dp", "round-0/train", "round-1/seeds", "final/seeds"}
    assert plan["round-1/synthesize"] == ("re-run", "synthesis.temperature: 0.0 -> 0.5")
    assert plan["final/export"][0] == "re-run"
    kept = [*UPSTREAM[:4], "rounds/0", "rounds/1/seeds.jsonl", "final/seeds.jsonl"]
    before = snapshot(run, kept)
    old = (run / "rounds/1/synthesize/kept.jsonl").stat().st_mtime_ns
    finish(scoder_run(config))
    assert snapshot(run, kept) == before
    assert (run / "rounds/1/synthesize/kept.jsonl").stat().st_mtime_ns != old
    for row in lines(run / "rounds/1/synthesize/kept.jsonl"):
        assert row["sampling"]["temperature"] == 0.5
    assert {a for a, _ in planned(config).values()} == {"reuse"}


def test_selection_ablations():
    """Each switch changes what is selected the way the paper's ablations need."""
    from conftest import make_candidate

    from scoder.score import pick_random_per_seed
    from scoder.select import BASELINES, choose

    cands = [
        make_candidate(id=f"s{s}-c{c}", seed_id=f"s{s}", score=float(s * 10 + c))
        for s in range(4)
        for c in range(3)
    ]
    # no scorer: one candidate per seed, at random but reproducibly; the others say why
    picked = pick_random_per_seed(cands, 7)
    assert sorted(c.seed_id for c in picked.kept) == ["s0", "s1", "s2", "s3"]
    assert picked.kept == pick_random_per_seed(cands, 7).kept
    assert any(c.id != f"{c.seed_id}-c2" for c in picked.kept)  # not simply the best
    assert {c.drop.reason for c in picked.dropped} == {"not_picked"} and len(picked.dropped) == 8
    best = [
        max((c for c in cands if c.seed_id == f"s{s}"), key=lambda c: c.score) for s in range(4)
    ]
    # no influence: judge-top@k, or random@k, by name, budget-matched
    assert [c.id for c in choose("judge", best, 2, 1001).kept] == ["s3-c2", "s2-c2"]
    drawn = choose("random", best, 2, 1001).kept
    assert len(drawn) == 2 and drawn == choose("random", best, 2, 1001).kept
    assert BASELINES == {"random_at_k": "random", "judge_top_at_k": "judge"}


def test_single_checkpoint_and_baseline_configs(tmp_path, parrot_model_dir):
    """M=1 samples from the last enhance checkpoint only; the OSS-Instruct baseline config runs
    the base model once per seed with no filters."""
    from importlib import resources

    config = write_config(tmp_path, parrot_model_dir, loop__checkpoints=1)
    cfg = load_config(config)
    assert cfg.loop.checkpoints == 1
    baseline = resources.files("scoder") / "configs" / "oss-instruct-baseline.yaml"
    base = load_config(
        Path(str(baseline)),
        [
            f"run_dir={tmp_path / 'oss'}",
            f"model.name={parrot_model_dir}",
            "model.device=cpu",
            f"seeds.source={tmp_path / 'seeds'}",
            "seeds.min_lines=2",
            "final.samples=3",
            "synthesis.temperature=0",
            "synthesis.max_new_tokens=120",
        ],
    )
    result = run_loop(base)
    assert result.rounds == [] and result.final.samples == 3
    rows = lines(tmp_path / "oss" / "final" / "dataset.jsonl")
    assert {r["checkpoint"] for r in rows} == {"base"} and all(r["score"] is None for r in rows)
    assert not (tmp_path / "oss" / "rounds").exists()  # no enhancement, no rounds


def test_final_code_model_is_trained_and_evaluated(tmp_path, parrot_model_dir):
    """code_model.enabled + code_model.eval_benchmarks: the dataset tunes a code model (merged,
    loadable without peft; no per-epoch checkpoints) and `scoder eval` scores it, prompted the way
    it was trained, results in RUN/eval/<bench>/. Adding the benchmark after the run runs the
    evaluation alone."""
    from importlib import resources

    baseline = resources.files("scoder") / "configs" / "oss-instruct-baseline.yaml"
    (tmp_path / "seeds").mkdir()
    for name, text in SEED_FILES.items():
        (tmp_path / "seeds" / name).write_text(text)
    sets = [
        f"run_dir={tmp_path / 'run'}",
        f"model.name={parrot_model_dir}",
        "model.device=cpu",
        f"seeds.source={tmp_path / 'seeds'}",
        "seeds.min_lines=2",
        "final.samples=2",
        "synthesis.temperature=0",
        "synthesis.max_new_tokens=120",
        "code_model.enabled=true",
        "code_model.train.epochs=1",
        "code_model.train.lora_targets=[q_proj, v_proj]",
        "code_model.train.template=plain",
        "eval.limit=2",
        "eval.max_new_tokens=16",
    ]
    first = run_loop(load_config(Path(str(baseline)), sets))
    merged = tmp_path / "run" / first.code_model.model
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    assert first.eval == {}

    with_eval = [*sets, "code_model.eval_benchmarks=[humaneval]"]
    plan = planned(Path(str(baseline)), *with_eval)
    assert {s for s, (a, _) in plan.items() if a != "reuse"} == {"eval/humaneval"}
    before = snapshot(tmp_path / "run", ["seeds", "final", "code-model"])
    result = run_loop(load_config(Path(str(baseline)), with_eval))
    assert snapshot(tmp_path / "run", ["seeds", "final", "code-model"]) == before
    humaneval = result.eval["humaneval"]
    assert "pass@1" in humaneval.pass_at_k["base"]
    results = json.loads((tmp_path / "run" / humaneval.results).read_text())
    assert results["tasks"] == 2 and results["model"]["id"] == str(merged)
    assert results["prompt"]["mode"] == "chat" and results["prompt"]["chosen"] == "explicitly"
    # trained on the plain transcript, prompted with it, though its tokenizer has a chat template
    assert results["prompt"]["rendered_with"] == PLAIN_TEMPLATE_ID
    assert first.code_model.checkpoints == 0
    assert (tmp_path / "run" / humaneval.results).parent == tmp_path / "run" / "eval" / "humaneval"


def test_stopping_rule():
    """Stop when the configured metric stops improving by the threshold; the reason says why."""
    from scoder.config import LoopConfig
    from scoder.loop import Synthesizer

    def summary(r, score, loss, selected=3):
        return RoundSummary(
            round=r,
            sampled_from=[],
            generated=6,
            parsed=6,
            decontaminated=None,
            best_per_seed=3,
            selected=selected,
            selection="influence",
            mean_selected_score=score,
            heldout_dp_loss={"influence": loss},
            diversity={},
            trained=Synthesizer(checkpoints=[]),
        )

    def rule(metric, delta, **loop):
        cfg = LoopConfig(stop_metric=metric, stop_min_delta=delta, **loop)
        return lambda rounds: stop_reason(cfg, rounds)

    rounds = [summary(1, 6.0, 0.80), summary(2, 6.5, 0.79)]
    assert rule("none", 0.0)(rounds) is None
    assert rule("mean_selected_score", 0.1)(rounds) is None  # +0.5 is enough
    assert "mean_selected_score improved by 0.5 < stop_min_delta=1" in rule(
        "mean_selected_score", 1.0
    )(rounds)
    assert "heldout_dp_loss improved by 0.01" in rule("heldout_dp_loss", 0.05)(rounds)
    assert rule("heldout_dp_loss", 0.001)(rounds) is None  # loss fell by 0.01
    assert rule("heldout_dp_loss", 0.0)(rounds[:1]) is None  # one round: nothing to compare
    empty = [summary(1, None, None, selected=0)]
    assert rule("none", 0.0, mix_dp=False)(empty).startswith("empty_selection")
    assert rule("none", 0.0)(empty) is None  # D_p mixed in: there is still something to learn


def test_a_round_with_nothing_selected_keeps_the_previous_synthesizer_and_stops(
    tmp_path, parrot_model_dir
):
    """min_score above every score: nothing is selected; without D_p mixed in there is nothing to
    train on, so the round keeps round 0's synthesizer and the loop stops, saying why."""
    config = load_config(
        write_config(
            tmp_path,
            parrot_model_dir,
            score__min_score=100.0,
            loop__rounds=2,
            loop__seeds_per_round=2,
            loop__mix_dp=False,
        )
    )
    result = run_loop(config)
    assert result.stopped["after_round"] == 1
    assert result.stopped["reason"].startswith("empty_selection")
    ledger = steps(tmp_path / "run")
    trained = ledger["round-1/train"]["result"]
    assert trained["skipped"]
    assert trained["checkpoints"] == ledger["round-0/train"]["result"]["checkpoints"]
    assert "round-2/summary" not in ledger and ledger["final/export"]["status"] == "done"
    rows = lines(tmp_path / "run" / "final" / "dataset.jsonl")
    assert all(r["checkpoint"] == "epoch-2" for r in rows)
    # resumed, the run stops at the same place without running anything
    again = run_loop(config)
    assert again.stopped == result.stopped and "round-2/summary" not in steps(tmp_path / "run")


def test_a_round_with_fewer_checkpoints_than_it_samples_stops_before_sampling(
    tmp_path, parrot_model_dir
):
    """save_every_steps above the steps of enhance: it saves its last step only, one checkpoint;
    loop.checkpoints=2 cannot be met, which is said before round 1 samples anything."""
    config = load_config(
        write_config(tmp_path, parrot_model_dir, train__save_every_steps=1000, loop__checkpoints=2)
    )
    with pytest.raises(ScoderError, match=r"loop.checkpoints=2, but .* has 1 checkpoint"):
        run_loop(config)
    ledger = steps(tmp_path / "run")
    assert [Path(c).name for c in ledger["round-0/train"]["result"]["checkpoints"]] == ["step-4"]
    assert not (tmp_path / "run" / "rounds" / "1" / "synthesize").exists()


def test_sampling_and_influence_checkpoints_are_separate_switches(
    tmp_path, parrot_model_dir, uninterrupted
):
    """select.checkpoints re-runs the selection and leaves sampling alone; loop.checkpoints=1
    (single-checkpoint Best-of-N) samples from the last checkpoint while influence still takes
    all of them."""
    run = copy_run(uninterrupted, tmp_path / "run")
    plan = planned(variant(uninterrupted, run, tmp_path, select__checkpoints=1))
    assert plan["round-1/synthesize"][0] == plan["round-1/score"][0] == "reuse"
    assert plan["round-1/select"][0] == "re-run"
    # how fast features are computed is not what they are: nothing re-runs
    faster = variant(uninterrupted, run, tmp_path, select__chunk_rows=7, select__batch_tokens=512)
    assert {action for action, _ in planned(faster).values()} == {"reuse"}

    config = variant(uninterrupted, run, tmp_path, loop__checkpoints=1)
    assert planned(config)["round-1/synthesize"][0] == "re-run"
    finish(scoder_run(config))
    manifest = json.loads((run / "rounds" / "1" / "manifest.json").read_text())["stages"]
    summary = json.loads((run / "rounds" / "1" / "summary.json").read_text())
    assert [Path(c).name for c in summary["sampled_from"]] == ["epoch-2"]
    assert [Path(c["path"]).name for c in manifest["select"]["checkpoints"]] == [
        "epoch-1",
        "epoch-2",
    ]


def _embedded(page: str, element_id: str):
    match = re.search(
        rf'<script type="application/json" id="{element_id}">(.*?)</script>', page, re.S
    )
    assert match, element_id
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_the_report_of_a_run_shows_the_run_s_own_numbers(uninterrupted):
    """`scoder run` ends by writing RUN/report.html and printing its path; the page has every
    section, its numbers are the run's files' numbers (parsed back from the page), and it loads
    nothing from anywhere."""
    report = uninterrupted / "report.html"
    out = (uninterrupted.parent / "output.txt").read_text()
    assert f"report: {report}" in " ".join(out.split())
    for raw in ("{'loss'", "'eval_loss'", "train_runtime", "Loading weights"):
        assert raw not in out, raw  # no trainer dictionaries, no weight-loading bars
    page = report.read_text()
    for section in (
        "Rounds at a glance",
        "Round 1",
        "Funnel",
        "Why samples were dropped",
        "Judge scores",
        "Influence",
        "Yield per checkpoint",
        "Judge against execution",
        "Time and tokens per stage",
        "Final dataset",
        'id="samples-browser"',
    ):
        assert section in page, section
    # self-contained: every image inline, no resource fetched from anywhere
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)

    facts = _embedded(page, "scoder-facts")
    (round1,) = facts["rounds"]
    manifest = json.loads((uninterrupted / "rounds/1/manifest.json").read_text())["stages"]
    funnel = dict(map(tuple, round1["funnel"]))
    synth, score = manifest["synthesize"]["counts"], manifest["score"]["counts"]
    assert funnel["generated"] == synth["generated"] == 12
    assert funnel["parsed"] == synth["accepted"]
    assert funnel["decontaminated"] == manifest["decontaminate"]["counts"]["kept"]
    assert (
        funnel["best per seed"]
        == score["selected"]
        == len(lines(uninterrupted / "rounds/1/score/kept.jsonl"))
    )
    assert funnel["selected"] == len(lines(uninterrupted / "rounds/1/select/kept.jsonl")) == 2
    summary = json.loads((uninterrupted / "rounds/1/summary.json").read_text())
    assert round1["heldout_dp_loss"] == summary["heldout_dp_loss"]
    assert round1["diversity"] == summary["diversity"]
    assert round1["per_checkpoint"]["epoch-1"]["generated"] == synth["per_checkpoint"]["epoch-1"]
    assert {c["stage"] for c in round1["costs"]} == set(manifest)
    scored = lines(uninterrupted / "rounds/1/score/scored.jsonl")
    assert sorted(round1["weighted_scores"]) == sorted(
        r["score"] for r in scored if r["score"] is not None
    )
    kept = lines(uninterrupted / "rounds/1/select/kept.jsonl")
    assert round1["top_k_cut"] == min(r["influence"] for r in kept)
    # the visible tables say the same
    assert f'<td>generated</td><td class="n">{synth["generated"]}</td>' in page
    # the sample browser holds every scored candidate, with its status and provenance
    samples = {s["id"]: s for s in _embedded(page, "scoder-samples")}
    for row in scored:
        assert row["id"] in samples and samples[row["id"]]["checkpoint"] == row["checkpoint"]
    assert {s["status"] for s in samples.values()} >= {"selected", "dropped"}


def test_the_data_card_says_how_the_data_was_made_and_links_nowhere(uninterrupted):
    card = " ".join((uninterrupted / "final" / "README.md").read_text().split())
    assert "http" not in card
    summary = json.loads((uninterrupted / "rounds/1/summary.json").read_text())
    loss = summary["heldout_dp_loss"]["influence"]
    assert f"| 1 | {summary['generated']} | {summary['best_per_seed']} |" in card
    assert f"influence {loss:.4g}" in card
    for needed in ("Execution gate: off", "`influence` top-k", "weighted consistency 0.2"):
        assert needed in card, needed


def test_the_demo_outcome_is_the_funnel_two_rows_and_nothing_as_markup(uninterrupted, capsys):
    from scoder.display import print_demo_outcome

    print_demo_outcome(uninterrupted)
    out = capsys.readouterr().out
    summary = json.loads((uninterrupted / "rounds/1/summary.json").read_text())
    counts = json.loads((uninterrupted / "rounds/1/manifest.json").read_text())["stages"]
    synth, scored = counts["synthesize"]["counts"], counts["score"]["counts"]
    round_line = next(line for line in out.splitlines() if "round 1" in line)
    cells = [c.strip() for c in round_line.strip("│ ").split("│")]
    assert cells == [
        "round 1",
        str(synth["generated"]),
        str(synth["accepted"]),
        str(scored["executed_passed"]),
        str(summary["selected"]),
    ]
    rows = lines(uninterrupted / "final" / "dataset.jsonl")
    final_line = next(line for line in out.splitlines() if "final dataset" in line)
    assert final_line.rstrip(" │").endswith(str(len(rows)))
    shown = rows[:2]
    assert out.count("--- example") == len(shown)
    for row in shown:
        for part in ("problem", "solution", "tests"):
            assert row[part].strip().splitlines()[0] in out  # as written, brackets and all
    card = (uninterrupted / "final" / "README.md").read_text()
    assert "from the local directory" in card


def test_the_report_renders_in_a_browser(uninterrupted, tmp_path):
    import shutil as sh

    browser = sh.which("chromium") or sh.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it where apt-get is)")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            (uninterrupted / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05  # not a blank page


def test_scoder_demo_with_another_model_ends_with_funnel_rows_and_report(
    tmp_path, parrot_model_dir
):
    """`scoder demo --model M` makes M both synthesizer and judge, keeps the demo's execution
    gate, and ends with the funnel, two dataset rows and the report's path, in that order."""
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for name, text in SEED_FILES.items():
        (seeds / name).write_text(text)
    sets = {
        "seeds.source": str(seeds),
        "seeds.min_lines": 2,
        "model.device": "cpu",
        "score.judge.device": "cpu",
        "synthesis.temperature": 0,
        "synthesis.max_new_tokens": 120,
        "score.max_new_tokens": 80,
        "train.lora_targets": "[q_proj, v_proj]",
        "train.max_length": 4096,  # the tiny tokenizer spells MBPP rows out in many tokens
        "select.projection_dim": 64,
        "loop.seeds_per_round": 3,
        "loop.dp_heldout": 1,
        "teacher.limit": 4,
        "final.samples": 2,
    }
    args = [sys.executable, "-m", "scoder.cli", "demo", "--model", str(parrot_model_dir)]
    args += ["--out", str(tmp_path / "run")]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    config = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert config["model"]["name"] == config["score"]["judge"]["name"] == str(parrot_model_dir)
    assert config["score"]["require_pass"] is True
    rows = lines(tmp_path / "run" / "final" / "dataset.jsonl")
    assert rows and all(row["tests_passed"] for row in rows)
    funnel, example, report = out.index("funnel"), out.index("--- example 1"), out.index("report:")
    assert funnel < example < report
    assert ANSWER_SOLUTION.splitlines()[0] in out[example:report]
    assert "embedded 135M" not in out
