"""`scoder select` on a tiny model: checkpoints with named Adam state, influence, top-k + baselines."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_candidate
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from scoder.checkpoints import OPTIMIZER_FILE, read_checkpoint, save_checkpoint
from scoder.config import load_config
from scoder.errors import ScoderError
from scoder.models import load_causal_lm, resolve_model
from scoder.select import STRATEGIES, choose, run_select, training_records
from scoder.store import read_jsonl

ROWS = [
    (
        "def add(a, b):\n    return a + b",
        "Write add(a, b).",
        "def add(a, b):\n    return a + b",
        "assert add(1, 2) == 3",
    ),
    (
        "def neg(x):\n    return -x",
        "Write neg(x).",
        "def neg(x):\n    return -x",
        "assert neg(2) == -2",
    ),
    ("class Box:\n    pass", "Write a class Box.", "class Box:\n    pass", "assert Box()"),
    (
        "def sq(x):\n    return x * x",
        "Square a number.",
        "def sq(x):\n    return x * x",
        "assert sq(3) == 9",
    ),
    (
        "def hi():\n    return 'hi'",
        "Return hi.",
        "def hi():\n    return 'hi'",
        "assert hi() == 'hi'",
    ),
    ("def one():\n    return 1", "Return one.", "def one():\n    return 1", "assert one() == 1"),
]


def candidate(i, seed, problem, solution, tests, score):
    return make_candidate(
        id=f"c{i}",
        seed_id=f"s{i}",
        seed_text=seed,
        problem=problem,
        solution=solution,
        tests=tests,
        score=score,
    )


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory):
    """Two checkpoints of one short real LoRA training run (AdamW), optimizer state by name."""
    root = tmp_path_factory.mktemp("ckpts")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    records = training_records(
        [dict(zip(("seed_text", "problem", "solution", "tests"), r)) for r in ROWS],
        tokenizer,
        "oss-instruct-v1",
        "rows",
    )
    paths = []
    for step, rec in enumerate(records * 2, start=1):
        ids = tokenizer(
            rec["prompt"] + rec["response"], return_tensors="pt", add_special_tokens=False
        )["input_ids"][:, :256]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step in (6, 12):
            paths.append(
                save_checkpoint(
                    root / f"epoch-{step // 6}", model, opt, mean_lr=1e-2 / (step // 6), step=step
                )
            )
    return paths


def test_checkpoint_round_trip_keeps_adam_state_by_name(tiny_model_dir, checkpoints):
    ref = resolve_model(str(tiny_model_dir))
    model = load_causal_lm(ref, device="cpu", adapter=checkpoints[1], trainable=True)
    ckpt = read_checkpoint(checkpoints[1], model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ckpt.optimizer_state) == trainable and len(trainable) == 8
    assert ckpt.step == 12 and ckpt.mean_lr == 5e-3
    first = next(iter(ckpt.optimizer_state.values()))
    assert first.exp_avg_sq.abs().sum() > 0


def write_inputs(tmp_path):
    cands = tmp_path / "candidates.jsonl"
    cands.write_text(
        "".join(
            candidate(i, *r, score=float(i)).model_dump_json() + "\n" for i, r in enumerate(ROWS)
        )
    )
    dp = tmp_path / "dp.jsonl"
    dp.write_text(
        "".join(
            json.dumps(dict(zip(("seed_text", "problem", "solution", "tests"), r))) + "\n"
            for r in ROWS[:3]
        )
    )
    return cands, dp


def test_select_writes_top_k_and_baselines_and_reuses_features(
    tmp_path, tiny_model_dir, checkpoints
):
    cands, dp = write_inputs(tmp_path)
    sets = [
        f"run_dir={tmp_path / 'run'}",
        f"model.name={tiny_model_dir}",
        "model.device=cpu",
        "select.k=3",
        "select.projection_dim=256",
    ]
    run, out = run_select(load_config(None, sets), cands, dp=dp, checkpoints=checkpoints)
    baselines = out.baselines
    assert len(out.kept) == len(baselines["random_at_k"]) == len(baselines["judge_top_at_k"]) == 3
    assert [c.id for c in baselines["judge_top_at_k"]] == ["c5", "c4", "c3"]
    infl = [c.influence for c in out.kept]
    assert infl == sorted(infl, reverse=True) and all(isinstance(v, float) for v in infl)
    assert {c.drop.reason for c in out.dropped} == {"below_top_k"} and len(out.dropped) == 3
    assert all(c.drop.stage == "select" for c in out.dropped)
    stage = run.load_manifest()["stages"]["select"]
    assert stage["counts"]["features_reused"] == 0
    assert [c["adam_preconditioned"] for c in stage["checkpoints"]] == [True, True]
    for name in (
        "kept.jsonl",
        "dropped.jsonl",
        "baselines/random_at_k.jsonl",
        "baselines/judge_top_at_k.jsonl",
    ):
        assert read_jsonl(run.stage_dir("select") / name)

    # again (--force re-runs the stage): every feature comes from the store, same answer
    again = run_select(load_config(None, sets), cands, dp=dp, checkpoints=checkpoints, force=True)
    assert again[0].load_manifest()["stages"]["select"]["counts"]["features_reused"] == 2 * (6 + 3)
    assert [c.id for c in again[1].kept] == [c.id for c in out.kept]
    assert [c.influence for c in again[1].kept] == infl


def test_shards_compute_features_that_the_full_run_reuses(tmp_path, tiny_model_dir, checkpoints):
    cands, dp = write_inputs(tmp_path)
    common = [
        f"model.name={tiny_model_dir}",
        "model.device=cpu",
        "select.k=2",
        "select.projection_dim=128",
    ]
    inputs = dict(dp=dp, checkpoints=checkpoints[:1])
    sets = [f"run_dir={tmp_path / 'run'}", *common]
    for i in (1, 2):
        run_select(load_config(None, sets), cands, shard=(i, 2), **inputs)
    run, out = run_select(load_config(None, sets), cands, **inputs)
    assert run.load_manifest()["stages"]["select"]["counts"]["features_reused"] == 6 + 3
    single = run_select(
        load_config(None, [f"run_dir={tmp_path / 'single'}", *common]), cands, **inputs
    )[1]
    assert [c.influence for c in out.kept] == [c.influence for c in single.kept]
    with pytest.raises(ScoderError, match="between 1 and 2"):
        run_select(load_config(None, sets), cands, shard=(3, 2), **inputs)


def test_index_keyed_optimizer_state_is_refused_or_falls_back(
    tmp_path, tiny_model_dir, checkpoints
):
    import shutil

    bad = tmp_path / "by-index"
    shutil.copytree(checkpoints[0], bad)
    tensors = load_file(str(bad / OPTIMIZER_FILE))
    save_file(
        {f"{i}.{k.rsplit('.', 1)[1]}": v for i, (k, v) in enumerate(tensors.items())},
        str(bad / OPTIMIZER_FILE),
    )
    cands, dp = write_inputs(tmp_path)
    sets = [
        f"run_dir={tmp_path / 'run'}",
        f"model.name={tiny_model_dir}",
        "model.device=cpu",
        "select.k=2",
        "select.projection_dim=64",
    ]
    with pytest.raises(ScoderError, match="keyed by parameter name"):
        run_select(load_config(None, sets), cands, dp=dp, checkpoints=[bad])
    run, out = run_select(
        load_config(None, [*sets, "select.missing_optimizer_state=plain"]),
        cands,
        dp=dp,
        checkpoints=[bad],
        force=True,
    )
    assert run.load_manifest()["stages"]["select"]["checkpoints"][0]["adam_preconditioned"] is False
    assert len(out.kept) == 2


def test_bad_dp_rows_name_the_field(tmp_path, tiny_model_dir, checkpoints):
    cands, dp = write_inputs(tmp_path)
    dp.write_text(json.dumps({"seed_text": "x", "problem": "p"}) + "\n")
    sets = [f"run_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}"]
    with pytest.raises(ScoderError, match="row 1 has no text field 'solution'"):
        run_select(load_config(None, sets), cands, dp=dp, checkpoints=checkpoints[:1])


def test_influence_needs_dp_and_checkpoints_and_says_both(tmp_path, tiny_model_dir):
    cands, _ = write_inputs(tmp_path)
    with pytest.raises(ScoderError) as caught:
        run_select(load_config(None, [f"run_dir={tmp_path / 'run'}"]), cands)
    assert "D_p file" in str(caught.value) and "checkpoints" in str(caught.value)


def test_strategies_share_one_shape_and_are_chosen_by_name(tmp_path):
    """judge-top@k and random@k need no model: the stage runs them by name; every strategy takes
    (candidates, k, seed) and ranks them, and the first k are kept."""
    pool = [
        make_candidate(id=f"c{i}", seed_id=f"s{i}", score=float(i), influence=-i) for i in range(6)
    ]
    assert [c.id for c in choose("judge", pool, 2, 0).kept] == ["c5", "c4"]
    assert [c.id for c in choose("influence", pool, 2, 0).kept] == ["c0", "c1"]
    drawn = choose("random", pool, 3, 7)
    assert len(drawn.kept) == 3 and drawn.kept == choose("random", pool, 3, 7).kept
    assert {c.drop.reason for c in drawn.dropped} == {"below_top_k"} and len(drawn.dropped) == 3
    for name, strategy in STRATEGIES.items():
        ranked = strategy(pool, 3, 1)
        assert sorted(c.id for c in ranked) == sorted(c.id for c in pool), name
    cands, _ = write_inputs(tmp_path)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "select.k=2"])
    run, out = run_select(cfg, cands, strategy="judge")
    assert [c.id for c in out.kept] == ["c5", "c4"] and all(c.influence is None for c in out.kept)
    assert [c.id for c in out.baselines["judge_top_at_k"]] == ["c5", "c4"]
    assert (run.stage_dir("select") / "dropped.jsonl").is_file()
