"""`scoder select` on a tiny model: checkpoints with named Adam state, influence, top-k + baselines."""

from __future__ import annotations

import json

import numpy as np
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
from scoder.select import STRATEGIES, choose, run_select, training_examples
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


def train_checkpoints(model_dir, root, *, steps=(6, 12)):
    """Checkpoints of one short real LoRA training run (AdamW), optimizer state by name."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    examples = training_examples(
        [dict(zip(("seed_text", "problem", "solution", "tests"), r)) for r in ROWS],
        tokenizer,
        load_config(None, [f"model.name={model_dir}"]),
        "rows",
    )
    paths = []
    for step, ex in enumerate(examples * 2, start=1):
        ids = torch.tensor([(ex.prompt_ids + ex.response_ids)[:256]])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step in steps:
            paths.append(
                save_checkpoint(
                    root / f"epoch-{step // 6}", model, opt, mean_lr=1e-2 / (step // 6), step=step
                )
            )
    return paths


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory):
    return train_checkpoints(tiny_model_dir, tmp_path_factory.mktemp("ckpts"))


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
    # shards batch other samples together: the same features up to float rounding
    assert [c.id for c in out.kept] == [c.id for c in single.kept]
    assert [c.influence for c in out.kept] == pytest.approx(
        [c.influence for c in single.kept], rel=1e-5
    )
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


def test_selection_refers_to_the_raw_texts_where_scoring_stored_them(tmp_path, tiny_model_dir):
    """The records select writes keep pointing at the score stage's raw store (references
    rebased to each file's directory), and load back with their texts; nothing is copied."""
    from scoder.records import (
        RAW_FILE,
        RawTexts,
        raw_texts,
        read_candidates_with_raw,
        refer_raw,
    )
    from scoder.store import jsonl_writer, read_jsonl

    pool = [
        make_candidate(id=f"c{i}", seed_id=f"s{i}", score=float(i), raw_output=f"raw {i}")
        for i in range(5)
    ]
    score_dir = tmp_path / "score"
    refs = []
    with jsonl_writer(score_dir / RAW_FILE) as write:
        refs = [f"{RAW_FILE}#{write(raw_texts(c))}" for c in pool]
    (score_dir / "kept.jsonl").write_text(
        "".join(refer_raw(c, ref).model_dump_json() + "\n" for c, ref in zip(pool, refs))
    )
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}"])
    run, out = run_select(cfg, score_dir / "kept.jsonl", strategy="judge", k=2)
    assert [c.id for c in out.kept] == ["c4", "c3"] and len(out.dropped) == 3
    where = run.stage_dir("select")
    assert read_jsonl(where / "kept.jsonl")[0]["raw_ref"].startswith(f"../../score/{RAW_FILE}#")
    base = read_jsonl(where / "baselines" / "judge_top_at_k.jsonl")[0]["raw_ref"]
    assert base.startswith(f"../../../score/{RAW_FILE}#")
    for name in ("kept.jsonl", "dropped.jsonl", "baselines/random_at_k.jsonl"):
        for c in read_candidates_with_raw(where / name):
            assert c.raw_output == f"raw {c.id[1:]}" and c.raw_ref is None
    assert len(read_jsonl(score_dir / RAW_FILE, RawTexts)) == 5


def _sets(tmp_path, model_dir, *extra):
    return [
        f"run_dir={tmp_path / 'run'}",
        f"model.name={model_dir}",
        "model.device=cpu",
        "select.k=3",
        "select.projection_dim=1000000",  # >= the LoRA parameter count: exact, no projection
        *extra,
    ]


def _hand_gradient(model, example):
    """HF's own loss (mean over the response tokens) and backward, one sample alone: by name."""
    ids = torch.tensor([example.prompt_ids + example.response_ids])
    labels = torch.tensor([[-100] * len(example.prompt_ids) + example.response_ids])
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=labels).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def _hand_adam(grads, checkpoint):
    """Adam's update direction from the checkpoint's saved moments, written out by hand."""
    moments = load_file(str(checkpoint / OPTIMIZER_FILE))
    info = json.loads((checkpoint / "scoder_checkpoint.json").read_text())
    (b1, b2), eps, t = info["betas"], info["eps"], info["step"] + 1
    out = {}
    for name, g in grads.items():
        key = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        m = b1 * moments[f"{key}.exp_avg"] + (1 - b1) * g
        v = b2 * moments[f"{key}.exp_avg_sq"] + (1 - b2) * g * g
        out[name] = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return out


def _unit(grads):
    flat = torch.cat([g.flatten() for g in grads.values()]).double()
    return flat / flat.norm()


def test_influence_at_two_checkpoints_equals_the_sum_by_hand(tmp_path, tiny_model_dir, checkpoints):
    """influence = lr_1 cos_1 + lr_2 cos_2, each cos the mean over D_p of the cosine between the
    candidate's Adam-preconditioned gradient and D_p's plain one, all computed here by hand; the
    rows the stage stored are those very vectors."""
    cands, dp = write_inputs(tmp_path)
    config = load_config(None, _sets(tmp_path, tiny_model_dir))
    run, out = run_select(config, cands, dp=dp, checkpoints=checkpoints)
    got = {c.id: c.influence for c in out.kept + out.dropped}

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cand_rows = read_jsonl(cands)
    cand_ex = training_examples(cand_rows, tokenizer, config, "c")
    dp_ex = training_examples(read_jsonl(dp), tokenizer, config, "dp")
    expected = torch.zeros(len(cand_ex), dtype=torch.float64)
    for path in checkpoints:
        model = load_causal_lm(resolve_model(str(tiny_model_dir)), adapter=path, trainable=True)
        lr = json.loads((path / "scoder_checkpoint.json").read_text())["mean_lr"]
        gammas = [_unit(_hand_adam(_hand_gradient(model, ex), path)) for ex in cand_ex]
        plains = [_unit(_hand_gradient(model, ex)) for ex in dp_ex]
        for i, gamma in enumerate(gammas):
            expected[i] += lr * torch.stack([gamma @ p for p in plains]).mean()
        # the stored feature rows are the preconditioned / plain unit vectors themselves
        store = next(
            d
            for d in (run.path / "features").glob("*/*")
            if json.loads((d / "spec.json").read_text())["checkpoint"] == str(path)
        )
        stored_c = np.load(next((store / "candidates-adam").glob("*.npy")))
        stored_d = np.load(next((store / "dp-plain").glob("*.npy")))
        np.testing.assert_allclose(stored_c, torch.stack(gammas).numpy(), atol=1e-5)
        np.testing.assert_allclose(stored_d, torch.stack(plains).numpy(), atol=1e-5)
    for row, value in zip(cand_rows, expected.tolist()):
        assert got[row["id"]] == pytest.approx(value, rel=1e-4, abs=1e-9)


def test_an_exact_copy_of_a_dp_row_ranks_first(tmp_path, tiny_model_dir, checkpoints):
    """With plain gradients (a checkpoint without Adam state, allowed by
    missing_optimizer_state=plain) a candidate that is the D_p row has cosine 1 with it and ranks
    first. Two limits of the oracle, measured on this model and true of LESS's definition: with
    several D_p rows a candidate near all of them can beat the copy of one (a mean of cosines),
    and with Adam preconditioning Gamma is dominated by the saved first moment (0.9 m_t against
    0.1 g, the same for every candidate), so the copy came second of six: that path is checked
    against the sum by hand above instead."""
    import shutil

    cands, dp = write_inputs(tmp_path)
    rows = read_jsonl(cands)
    twin = next(r for r in rows if r["id"] == "c1")
    dp.write_text(json.dumps(twin) + "\n")
    others = [r for r in rows if r["id"] != "c1"]
    cands.write_text("".join(json.dumps(r) + "\n" for r in [*others[:3], twin, *others[3:]]))
    plain = []
    for path in checkpoints:
        shutil.copytree(path, tmp_path / path.name)
        (tmp_path / path.name / OPTIMIZER_FILE).unlink()
        plain.append(tmp_path / path.name)
    config = load_config(
        None, _sets(tmp_path, tiny_model_dir, "select.k=1", "select.missing_optimizer_state=plain")
    )
    run, out = run_select(config, cands, dp=dp, checkpoints=plain)
    assert [c.id for c in out.kept] == ["c1"]
    stage = run.load_manifest()["stages"]["select"]
    assert [c["adam_preconditioned"] for c in stage["checkpoints"]] == [False, False]


def test_select_killed_mid_checkpoint_resumes_to_the_same_features_and_selection(
    tmp_path, tiny_model_dir, checkpoints
):
    """A real SIGKILL after the second chunk of the first checkpoint's features: the chunks
    written survive, the resumed run computes only the rest, and features and selection are
    those of a run never interrupted, bit for bit."""
    import os
    import signal
    import subprocess
    import sys

    cands, dp = write_inputs(tmp_path)
    extra = ["select.chunk_rows=2", "select.projection_dim=512"]
    killed_sets = _sets(tmp_path / "killed", tiny_model_dir, *extra)
    script = f"""
import os, signal, sys
from pathlib import Path
import scoder.feature_store as store
import scoder.select as select
from scoder.config import load_config
real, saved = store.save_part, []
def save_then_die(*args, **kwargs):
    path = real(*args, **kwargs)
    saved.append(path)
    if len(saved) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
store.save_part = save_then_die
select.run_select(load_config(None, {killed_sets!r}), Path({str(cands)!r}), dp=Path({str(dp)!r}),
                  checkpoints=[Path(p) for p in {[str(c) for c in checkpoints]!r}])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    parts = sorted((tmp_path / "killed" / "run" / "features").rglob("part-*.json"))
    assert len(parts) == 2 and all(len(json.loads(p.read_text())) == 2 for p in parts)

    run, resumed = run_select(load_config(None, killed_sets), cands, dp=dp, checkpoints=checkpoints)
    assert run.load_manifest()["stages"]["select"]["counts"]["features_reused"] == 4
    _, fresh = run_select(
        load_config(None, _sets(tmp_path / "fresh", tiny_model_dir, *extra)),
        cands,
        dp=dp,
        checkpoints=checkpoints,
    )
    assert [(c.id, c.influence) for c in resumed.kept] == [(c.id, c.influence) for c in fresh.kept]

    def features(root):
        out = {}
        for index in (root / "run" / "features").rglob("part-*.json"):
            array = np.load(index.with_suffix(".npy"))
            kind = f"{index.parent.parent.parent.name}/{index.parent.name}"
            for key, row in zip(json.loads(index.read_text()), array):
                out[kind, key] = row
        return out

    a, b = features(tmp_path / "killed"), features(tmp_path / "fresh")
    assert a.keys() == b.keys() and len(a) == 2 * (6 + 3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert os.environ.get("SCODER_CACHE")  # the subprocess used the test session's cache


def test_one_base_model_serves_every_checkpoint_and_select_checkpoints_picks_the_last(
    tmp_path, tiny_model_dir, checkpoints, monkeypatch
):
    from transformers import AutoModelForCausalLM as Auto

    loads = []
    real = Auto.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        loads.append(args[0])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Auto, "from_pretrained", classmethod(counted))
    cands, dp = write_inputs(tmp_path)
    run, _ = run_select(
        load_config(None, _sets(tmp_path, tiny_model_dir)), cands, dp=dp, checkpoints=checkpoints
    )
    assert len(loads) == 1  # two checkpoints, one base model
    used = run.load_manifest()["stages"]["select"]["checkpoints"]
    assert [c["path"] for c in used] == [str(p) for p in checkpoints]

    last = load_config(None, _sets(tmp_path / "last", tiny_model_dir, "select.checkpoints=1"))
    run, _ = run_select(last, cands, dp=dp, checkpoints=checkpoints)
    used = run.load_manifest()["stages"]["select"]["checkpoints"]
    assert [c["path"] for c in used] == [str(checkpoints[-1])]
    three = load_config(None, _sets(tmp_path / "three", tiny_model_dir, "select.checkpoints=3"))
    with pytest.raises(ScoderError, match=r"select.checkpoints=3, but only 2 checkpoint"):
        run_select(three, cands, dp=dp, checkpoints=checkpoints)


def test_a_base_model_synthesizer_gets_plain_format_gradients(
    tmp_path, tiny_base_model_dir, tmp_path_factory
):
    """No chat template: influence is taken on the plain transcript the trainer used, and asking
    for the chat template says what to set instead of a traceback."""
    ckpts = train_checkpoints(tiny_base_model_dir, tmp_path_factory.mktemp("base-ckpts"))
    cands, dp = write_inputs(tmp_path)
    _, out = run_select(
        load_config(None, _sets(tmp_path, tiny_base_model_dir)), cands, dp=dp, checkpoints=ckpts
    )
    assert len(out.kept) == 3 and all(np.isfinite(c.influence) for c in out.kept)
    chat = load_config(None, _sets(tmp_path / "chat", tiny_base_model_dir, "train.template=chat"))
    with pytest.raises(ScoderError, match="has no chat template; set train.template=plain"):
        run_select(chat, cands, dp=dp, checkpoints=ckpts)
