"""`scoder train` on 2 CPU processes (DDP over gloo, launched by scoder with torchrun): the same
steps and checkpoint format as one process, and the checkpoints load back into `select`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_select import write_inputs
from test_train import settings

from scoder.checkpoints import CHECKPOINT_INFO, OPTIMIZER_FILE
from scoder.config import load_config
from scoder.errors import ScoderError
from scoder.launch import command
from scoder.select import run_select
from scoder.train import run_train


def _files(checkpoint):
    return sorted(p.name for p in checkpoint.iterdir())


def test_two_processes_train_the_same_steps_into_the_same_checkpoint_format(
    tmp_path, tiny_model_dir, dp_file
):
    one = run_train(load_config(None, settings(tmp_path, tiny_model_dir, "one")), dp_file)[1]
    two_cfg = load_config(
        None, settings(tmp_path, tiny_model_dir, "two", "train.distributed.processes=2")
    )
    run, two = run_train(two_cfg, dp_file)
    # train.batch_size is the batch of both processes together: the same steps, the same spans
    assert [c["step"] for c in two["checkpoints"]] == [c["step"] for c in one["checkpoints"]]
    assert [c["mean_lr"] for c in two["checkpoints"]] == pytest.approx(
        [c["mean_lr"] for c in one["checkpoints"]]
    )
    stage = run.load_manifest()["stages"]["train"]
    assert stage["processes"] == 2 and stage["sharding"] == "none"  # DDP: no shards
    for a, b in zip(one["checkpoints"], two["checkpoints"]):
        a_path, b_path = Path(a["path"]), Path(b["path"])
        assert _files(a_path) == _files(b_path)
        ta, tb = load_file(a_path / OPTIMIZER_FILE), load_file(b_path / OPTIMIZER_FILE)
        assert {k: v.shape for k, v in ta.items()} == {k: v.shape for k, v in tb.items()}
        assert all(tb[k].abs().sum() > 0 for k in tb)  # the moments of real steps
        # the same steps on the same samples: the same numbers up to the all-reduce's rounding
        for k in ta:
            torch.testing.assert_close(tb[k], ta[k], rtol=1e-4, atol=1e-7)
        wa = load_file(a_path / "adapter_model.safetensors")
        wb = load_file(b_path / "adapter_model.safetensors")
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)
        ia = json.loads((a_path / CHECKPOINT_INFO).read_text())
        ib = json.loads((b_path / CHECKPOINT_INFO).read_text())
        assert ia.keys() == ib.keys() and ia["step"] == ib["step"]
    # the 2-process checkpoints are what influence reads
    cands, dp = write_inputs(tmp_path)
    sets = [
        f"run_dir={tmp_path / 'select'}",
        f"model.name={tiny_model_dir}",
        "model.device=cpu",
        "select.k=2",
        "select.projection_dim=64",
    ]
    paths = [c["path"] for c in two["checkpoints"]]
    selected = run_select(load_config(None, sets), cands, dp=dp, checkpoints=paths)
    stage = selected[0].load_manifest()["stages"]["select"]
    assert [c["adam_preconditioned"] for c in stage["checkpoints"]] == [True] * len(paths)
    assert len(selected[1].kept) == 2


def test_a_strategy_that_cannot_run_here_fails_clearly_instead_of_running_another(
    tmp_path, tiny_model_dir, dp_file
):
    # accelerate runs FSDP only on accelerators: on CPU it would quietly train plain DDP
    cfg = load_config(
        None,
        settings(
            tmp_path,
            tiny_model_dir,
            "bad",
            "train.distributed.processes=2",
            "train.distributed.strategy=fsdp",
        ),
    )
    with pytest.raises(
        ScoderError,
        match="distributed training failed .*: train.distributed.strategy=fsdp, but .*use strategy ddp on CPU; its log",
    ):
        run_train(cfg, dp_file)


def test_launch_commands_and_checks(tmp_path):
    cfg = load_config(None, ["train.distributed.processes=2"]).train.distributed
    cmd = command(cfg, tmp_path / "job.json")
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node" in cmd
    own = load_config(None, [f"train.distributed.accelerate_config={tmp_path / 'acc.yaml'}"])
    with pytest.raises(ScoderError, match="no such file"):
        command(own.train.distributed, tmp_path / "job.json")
    (tmp_path / "acc.yaml").write_text("num_processes: 2\n")
    assert "accelerate.commands.launch" in command(own.train.distributed, tmp_path / "job.json")
    with pytest.raises(ScoderError, match="multiple of them"):
        load_config(None, ["train.batch_size=3", "train.distributed.processes=2"])
