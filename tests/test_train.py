"""`scoder train` with TRL on a tiny model: checkpoints for influence, reproducibility, bad data."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scoder.checkpoints import read_checkpoint
from scoder.config import load_config
from scoder.errors import ScoderError
from scoder.models import load_causal_lm, resolve_model
from scoder.train import run_train


def load_checkpoint(path, model_dir):
    """The model with the checkpoint's adapter attached (trainable), and the checkpoint."""
    model = load_causal_lm(
        resolve_model(str(model_dir)), device="cpu", adapter=path, trainable=True
    )
    return model, read_checkpoint(path, model)


def settings(tmp_path, tiny_model_dir, name="run", *extra):
    return [
        f"run_dir={tmp_path / name}",
        f"model.name={tiny_model_dir}",
        "model.device=cpu",
        "train.epochs=2",
        "train.batch_size=2",
        "train.max_length=4096",
        "train.lora_targets=[q_proj, v_proj]",
        *extra,
    ]


def test_epoch_checkpoints_carry_named_adam_state_and_mean_lr(tmp_path, tiny_model_dir, dp_file):
    run, out = run_train(load_config(None, settings(tmp_path, tiny_model_dir)), dp_file)
    ckpts = out["checkpoints"]
    assert [c["step"] for c in ckpts] == [3, 6]
    # linear decay from 2e-4 over 6 steps: the mean rate of each epoch's three steps
    assert ckpts[0]["mean_lr"] == pytest.approx(2e-4 * (6 + 5 + 4) / 18)
    assert ckpts[1]["mean_lr"] == pytest.approx(2e-4 * (3 + 2 + 1) / 18)
    model, ckpt = load_checkpoint(ckpts[1]["path"], tiny_model_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ckpt.optimizer_state) == trainable and len(trainable) == 8
    stage = run.load_manifest()["stages"]["train"]
    assert stage["counts"]["examples"] == 6 and stage["counts"]["steps"] == 6
    assert stage["model"]["digest"].startswith("sha256:") and stage["task"] == "synthesizer"


@pytest.mark.parametrize(("every", "steps"), [(3, [3, 6]), (4, [4, 6]), (10, [6])])
def test_save_every_steps_always_saves_the_last_step(
    tmp_path, tiny_model_dir, dp_file, every, steps
):
    """6 steps in all: a multiple of the interval, not one, and fewer steps than the interval;
    the last checkpoint is always the trained model, and each span's mean lr is its own."""
    cfg = load_config(
        None, settings(tmp_path, tiny_model_dir, "run", f"train.save_every_steps={every}")
    )
    _, out = run_train(cfg, dp_file)
    ckpts = out["checkpoints"]
    assert [c["step"] for c in ckpts] == steps
    assert [Path(c["path"]).name for c in ckpts] == [f"step-{s}" for s in steps]
    bounds = [0, *steps]
    for c, start, end in zip(ckpts, bounds, bounds[1:]):
        want = sum(2e-4 * (6 - i) / 6 for i in range(start, end)) / (end - start)
        assert c["mean_lr"] == pytest.approx(want)


def test_same_config_reproduces_the_same_adapter(tmp_path, tiny_model_dir, dp_file):
    a = run_train(
        load_config(None, settings(tmp_path, tiny_model_dir, "a", "train.epochs=1")), dp_file
    )[1]
    b = run_train(
        load_config(None, settings(tmp_path, tiny_model_dir, "b", "train.epochs=1")), dp_file
    )[1]
    wa = load_file(f"{a['checkpoints'][0]['path']}/adapter_model.safetensors")
    wb = load_file(f"{b['checkpoints'][0]['path']}/adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


# every 2 steps; per epoch: test_loop's kill trials; resume points off: it starts over
@pytest.mark.parametrize("every", [2, "off"])
def test_a_training_cut_short_resumes_from_its_last_step_to_the_same_checkpoints(
    tmp_path, tiny_model_dir, dp_file, monkeypatch, every
):
    """Training stops at step 4 of 6 (a crash inside the trainer; a SIGKILL leaves the same files
    behind); the same call again resumes from the trainer's checkpoint at step 3 (per epoch) or
    2 (every 2 steps), not from the start, and every checkpoint (adapter, named Adam state, mean
    lr) equals an uninterrupted training's, to the bit. Only scoder's checkpoints are left."""
    from transformers import TrainerCallback

    from scoder import train

    extra = ["train.resume_points=false"] if every == "off" else [f"train.save_every_steps={every}"]
    whole = run_train(load_config(None, settings(tmp_path, tiny_model_dir, "a", *extra)), dp_file)[
        1
    ]
    cfg = load_config(None, settings(tmp_path, tiny_model_dir, "b", *extra))

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise RuntimeError("cut short")

    monkeypatch.setattr(train, "_progress_callback", lambda p: Crash())
    with pytest.raises(RuntimeError, match="cut short"):
        run_train(cfg, dp_file)
    monkeypatch.undo()
    trainer_saves = list((tmp_path / "b" / "train" / "trainer").glob("checkpoint-*"))
    assert len(trainer_saves) == (0 if every == "off" else 1)
    run, resumed = run_train(cfg, dp_file)
    stage = run.load_manifest()["stages"]["train"]
    # the crash came before the trainer saved step 4: scoder's step-4 checkpoint is made again
    assert stage.get("resumed_at_step") == {2: 2, "off": None}[every]
    assert stage["counts"]["steps"] == 6
    assert [c["step"] for c in resumed["checkpoints"]] == [c["step"] for c in whole["checkpoints"]]
    for a, b in zip(whole["checkpoints"], resumed["checkpoints"]):
        assert a["mean_lr"] == b["mean_lr"] and Path(a["path"]).name == Path(b["path"]).name
        for name in ("adapter_model.safetensors", "optimizer.safetensors"):
            wa, wb = load_file(f"{a['path']}/{name}"), load_file(f"{b['path']}/{name}")
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert not list((run.path / "train" / "trainer").glob("checkpoint-*"))


def test_untrainable_examples_are_dropped_or_refused(tmp_path, tiny_model_dir, dp_file):
    with pytest.raises(ScoderError, match="nothing trainable"):
        run_train(
            load_config(None, settings(tmp_path, tiny_model_dir, "x", "train.max_length=64")),
            dp_file,
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"seed_text": "x", "problem": "p"}) + "\n")
    with pytest.raises(ScoderError, match="row 1 has no text field 'solution'"):
        run_train(load_config(None, settings(tmp_path, tiny_model_dir, "y")), bad)
    # every problem with the inputs is named at once
    with pytest.raises(ScoderError) as caught:
        run_train(
            load_config(None, settings(tmp_path, tiny_model_dir, "z")),
            tmp_path / "missing.jsonl",
            eval_data=tmp_path / "missing-too.jsonl",
            init_adapter=tmp_path,
        )
    message = str(caught.value)
    assert "--data" in message and "--eval-data" in message and "--init-adapter" in message


def test_trained_checkpoints_feed_select(tmp_path, tiny_model_dir, dp_file):
    """train -> select, the way the loop chains them."""
    from scoder.select import run_select

    out = run_train(load_config(None, settings(tmp_path, tiny_model_dir)), dp_file)[1]
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
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"model.name={tiny_model_dir}",
            "model.device=cpu",
            "select.k=3",
            "select.projection_dim=128",
        ],
    )
    paths = [c["path"] for c in out["checkpoints"]]
    run, sel = run_select(cfg, cands, dp=dp_file, checkpoints=paths)
    assert len(sel.kept) == 3
    assert [
        c["adam_preconditioned"] for c in run.load_manifest()["stages"]["select"]["checkpoints"]
    ] == [True, True]


def test_multi_checkpoint_sampling_switches_adapters_on_one_model(
    tmp_path, tiny_model_dir, dp_file, adapter_dir
):
    """N samples per seed from each of M checkpoints; each candidate says which one wrote it."""
    from scoder.records import Candidate
    from scoder.seeds import run_seeds
    from scoder.store import read_jsonl
    from scoder.synthesize import run_synthesize

    trained = run_train(
        load_config(None, settings(tmp_path, tiny_model_dir, "t", "train.epochs=1")), dp_file
    )[1]
    code = tmp_path / "code"
    code.mkdir()
    (code / "m.py").write_text(
        "def f(x):\n    y = x + 1\n    return y\n\n\ndef g(x):\n    z = x * 2\n    return z\n"
    )
    sets = [
        f"run_dir={tmp_path / 'run'}",
        f"seeds.source={code}",
        f"model.name={tiny_model_dir}",
        "model.device=cpu",
        "synthesis.n=2",
        "synthesis.max_new_tokens=8",
        "synthesis.temperature=0",
    ]
    cfg = load_config(None, sets)
    run_seeds(cfg)
    checkpoints = [trained["checkpoints"][0]["path"], adapter_dir]
    run, result = run_synthesize(cfg, checkpoints=checkpoints)
    cands = result.accepted + result.rejected
    names = {c.checkpoint for c in cands}
    assert names == {"epoch-1", adapter_dir.name} and len(cands) == 2 * 2 * 2
    assert {(c.seed_id, c.checkpoint, c.sample_index) for c in cands}.__len__() == 8
    by_ckpt = {n: sorted(c.raw_output for c in cands if c.checkpoint == n) for n in names}
    assert by_ckpt["epoch-1"] != by_ckpt[adapter_dir.name]  # the adapters really switched
    counts = run.load_manifest()["stages"]["synthesize"]["counts"]
    assert counts["per_checkpoint"] == {"epoch-1": 4, adapter_dir.name: 4}
    assert (
        len(read_jsonl(run.stage_dir("synthesize") / "dropped.jsonl", Candidate))
        + len(read_jsonl(run.stage_dir("synthesize") / "kept.jsonl", Candidate))
        == 8
    )
    with pytest.raises(ScoderError, match="is not a LoRA adapter directory"):
        run_synthesize(cfg, checkpoints=[tmp_path], force=True)


def test_named_optimizer_state_is_the_trainers_own(tmp_path, tiny_model_dir, dp_file):
    """The last checkpoint's Adam state, looked up by parameter name, equals what the trainer's
    optimizer holds for that very parameter object."""
    out = run_train(load_config(None, settings(tmp_path, tiny_model_dir)), dp_file)[1]
    trainer = out["trainer"]
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    _, ckpt = load_checkpoint(out["checkpoints"][-1]["path"], tiny_model_dir)
    live = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert set(ckpt.optimizer_state) == set(live)
    for name, param in live.items():
        state = optimizer.state[param]
        saved = ckpt.optimizer_state[name]
        assert torch.equal(saved.exp_avg, state["exp_avg"].float())
        assert torch.equal(saved.exp_avg_sq, state["exp_avg_sq"].float())
        assert saved.step == int(state["step"]) == 6
    # names, not positions: a shuffled parameter order finds the same state
    for name in sorted(live, reverse=True)[:2]:
        assert not torch.equal(ckpt.optimizer_state[name].exp_avg, torch.zeros(1))


def test_code_task_model_loads_with_transformers_and_peft(tmp_path, tiny_model_dir, dp_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from scoder.cli import app

    args = ["train", "--task", "code", "--data", str(dp_file), "--out", str(tmp_path / "run")]
    for item in settings(tmp_path, tiny_model_dir)[1:]:  # the code model has its own sections
        item = item.replace("model.", "code_model.model.", 1) if item.startswith("model.") else item
        args += ["--set", item.replace("train.", "code_model.train.", 1)]
    result = CliRunner().invoke(app, [*args, "--merge"])
    assert result.exit_code == 0, result.output
    stage = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["train"]
    assert stage["task"] == "code" and stage["format"] == "chat template"
    # the manifest holds paths inside the run relative to the run directory
    assert not Path(stage["checkpoints"][-1]["path"]).is_absolute()
    ckpt = tmp_path / "run" / stage["checkpoints"][-1]["path"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with_adapter = PeftModel.from_pretrained(base, ckpt)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / stage["merged_model"])
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(
        with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5, rtol=1e-5
    )
    # the adapter really changed the model
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.allclose(plain(input_ids=ids).logits, merged(input_ids=ids).logits)


@pytest.mark.slow
def test_embedded_model_learns_dp_and_its_checkpoints_generate(tmp_path):
    """A short LoRA run of the real embedded model on two D_p samples: the completion loss on
    them goes down, and each epoch's checkpoint loads and generates."""
    from scoder.seeds import run_seeds
    from scoder.synthesize import run_synthesize

    rows = (resources.files("scoder") / "data" / "dp_mbpp_train.jsonl").read_text().splitlines()
    shortest = sorted(rows, key=len)[:2]
    data = tmp_path / "dp.jsonl"
    data.write_text("\n".join(shortest) + "\n")
    sets = [
        f"run_dir={tmp_path / 'run'}",
        "train.epochs=2",
        "train.batch_size=3",
        "train.learning_rate=2e-3",
        "train.lora_r=16",
        "train.max_length=1024",
    ]
    run, out = run_train(load_config(None, sets), data, eval_data=data)
    before, *after = out["eval_losses"]
    assert len(after) == 2 and after[-1] < before * 0.9, out["eval_losses"]
    code = tmp_path / "code"
    code.mkdir()
    (code / "m.py").write_text("def double(x):\n    y = x * 2\n    return y\n")
    cfg = load_config(
        None,
        [
            *sets[:1],
            f"seeds.source={code}",
            "seeds.min_lines=1",
            "synthesis.max_new_tokens=24",
            "synthesis.temperature=0",
        ],
    )
    run_seeds(cfg)
    _, result = run_synthesize(cfg, checkpoints=[c["path"] for c in out["checkpoints"]])
    cands = result.accepted + result.rejected
    assert {c.checkpoint for c in cands} == {"epoch-1", "epoch-2"}
    assert all(c.completion_tokens > 0 and c.raw_output.strip() for c in cands)
