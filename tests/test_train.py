"""`scoder train` with TRL on a tiny model: checkpoints for influence, reproducibility, bad data."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from safetensors.torch import load_file

from scoder.checkpoints import load_checkpoint
from scoder.config import load_config
from scoder.errors import ScoderError


@pytest.fixture(scope="module")
def dp_file(tmp_path_factory):
    rows = (resources.files("scoder") / "data" / "dp_mbpp_train.jsonl").read_text().splitlines()[:6]
    path = tmp_path_factory.mktemp("dp") / "dp.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def settings(tmp_path, tiny_model_dir, dp_file, name="run", *extra):
    return [
        f"run_dir={tmp_path / name}",
        f"model.name={tiny_model_dir}",
        "model.device=cpu",
        f"train.data={dp_file}",
        "train.epochs=2",
        "train.batch_size=2",
        "train.max_length=4096",
        "train.lora_targets=[q_proj, v_proj]",
        *extra,
    ]


def test_epoch_checkpoints_carry_named_adam_state_and_mean_lr(tmp_path, tiny_model_dir, dp_file):
    from transformers import AutoModelForCausalLM

    from scoder.train import run_train

    run, out = run_train(load_config(None, settings(tmp_path, tiny_model_dir, dp_file)))
    ckpts = out["checkpoints"]
    assert [c["step"] for c in ckpts] == [3, 6]
    # linear decay from 2e-4 over 6 steps: the mean rate of each epoch's three steps
    assert ckpts[0]["mean_lr"] == pytest.approx(2e-4 * (6 + 5 + 4) / 18)
    assert ckpts[1]["mean_lr"] == pytest.approx(2e-4 * (3 + 2 + 1) / 18)
    model, ckpt = load_checkpoint(
        ckpts[1]["path"], AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ckpt.optimizer_state) == trainable and len(trainable) == 8
    stage = run.load_manifest()["stages"]["train"]
    assert stage["counts"]["examples"] == 6 and stage["counts"]["steps"] == 6
    assert stage["model"]["digest"].startswith("sha256:") and stage["task"] == "synthesizer"


def test_same_config_reproduces_the_same_adapter(tmp_path, tiny_model_dir, dp_file):
    from scoder.train import run_train

    a = run_train(
        load_config(None, settings(tmp_path, tiny_model_dir, dp_file, "a", "train.epochs=1"))
    )[1]
    b = run_train(
        load_config(None, settings(tmp_path, tiny_model_dir, dp_file, "b", "train.epochs=1"))
    )[1]
    wa = load_file(f"{a['checkpoints'][0]['path']}/adapter_model.safetensors")
    wb = load_file(f"{b['checkpoints'][0]['path']}/adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_untrainable_examples_are_dropped_or_refused(tmp_path, tiny_model_dir, dp_file):
    from scoder.train import run_train

    with pytest.raises(ScoderError, match="nothing trainable"):
        run_train(
            load_config(
                None, settings(tmp_path, tiny_model_dir, dp_file, "x", "train.max_length=64")
            )
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"seed_text": "x", "problem": "p"}) + "\n")
    with pytest.raises(ScoderError, match="row 1 has no text field 'solution'"):
        run_train(load_config(None, settings(tmp_path, tiny_model_dir, bad, "y")))


def test_trained_checkpoints_feed_select(tmp_path, tiny_model_dir, dp_file):
    """train -> select, the way the loop will chain them."""
    from scoder.select import run_select
    from scoder.train import run_train

    out = run_train(load_config(None, settings(tmp_path, tiny_model_dir, dp_file)))[1]
    rows = [json.loads(line) for line in dp_file.read_text().splitlines()]
    from conftest import make_candidate

    cands = tmp_path / "cands.jsonl"
    cands.write_text(
        "".join(
            make_candidate(
                id=f"c{i}",
                seed_id=f"s{i}",
                seed_text=r["seed_text"],
                problem=r["problem"],
                solution=r["solution"],
                tests=r["tests"],
                score=1.0,
            ).model_dump_json()
            + "\n"
            for i, r in enumerate(rows)
        )
    )
    paths = ", ".join(c["path"] for c in out["checkpoints"])
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"model.name={tiny_model_dir}",
            "model.device=cpu",
            f"select.dp={dp_file}",
            f"select.checkpoints=[{paths}]",
            "select.k=3",
            "select.projection_dim=128",
        ],
    )
    run, sel = run_select(cfg, cands)
    assert len(sel["selected"]) == 3
    assert [
        c["adam_preconditioned"] for c in run.load_manifest()["stages"]["select"]["checkpoints"]
    ] == [True, True]
