"""Synthesizer checkpoints that influence estimation can use.

A checkpoint directory holds:
- the LoRA adapter, as peft saves it (`adapter_config.json`, `adapter_model.safetensors`);
- `optimizer.safetensors`: Adam's moments keyed by *parameter name* (`<name>.exp_avg`,
  `<name>.exp_avg_sq`), never by index: an index-keyed state cannot be matched to parameters
  once the model is rebuilt (LESS users hit exactly that);
- `scoder_checkpoint.json`: the optimizer step, betas, eps and the mean learning rate over the
  span of training this checkpoint closes (the weight of its influence term).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from scoder.errors import ScoderError
from scoder.influence import AdamState

if TYPE_CHECKING:
    import torch
    from torch import nn

CHECKPOINT_INFO = "scoder_checkpoint.json"
OPTIMIZER_FILE = "optimizer.safetensors"


class CheckpointError(ScoderError):
    pass


@dataclass
class Checkpoint:
    path: Path
    mean_lr: float
    step: int
    optimizer_state: dict[str, AdamState] | None  # None: the checkpoint has no optimizer state


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    mean_lr: float,
    step: int,
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save a peft model's adapter, its Adam state by parameter name, and the mean learning rate.
    Sharded trainings pass what they gathered (`adam_moments`, the whole `state_dict`)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, **({"state_dict": state_dict} if state_dict is not None else {}))
    if moments is None:
        moments = adam_moments(model, optimizer)
    tensors: dict[str, torch.Tensor] = {}
    for name, (exp_avg, exp_avg_sq) in moments.items():
        key = _adapter_key(name)
        tensors[f"{key}.exp_avg"] = exp_avg.detach().float().cpu().contiguous()
        tensors[f"{key}.exp_avg_sq"] = exp_avg_sq.detach().float().cpu().contiguous()
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    betas, eps = tuple(group.get("betas", (0.9, 0.999))), group.get("eps", 1e-8)
    save_file(tensors, str(path / OPTIMIZER_FILE))
    info = {"step": step, "mean_lr": mean_lr, "betas": list(betas), "eps": eps}
    (path / CHECKPOINT_INFO).write_text(json.dumps(info, indent=2))
    return path


Sharding = Literal["none", "fsdp", "deepspeed"]


def adam_moments(
    model: nn.Module, optimizer: Any, sharding: Sharding = "none"
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Adam's (exp_avg, exp_avg_sq) of each trainable parameter, by name, whole.

    Unsharded (one process, DDP: every process holds all of it) the optimizer's state is looked up
    by parameter object. Under FSDP (`model` the wrapped one) or DeepSpeed ZeRO each process holds
    a shard: their own gathering APIs make it whole, and every process must call this."""
    if sharding == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        full = get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return {
            name: (state["exp_avg"], state["exp_avg_sq"])
            for name, state in full["state"].items()
            if "exp_avg" in state
        }
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if sharding == "deepspeed":
        from deepspeed.utils import safe_get_full_optimizer_state

        return {
            name: (
                safe_get_full_optimizer_state(p, "exp_avg"),
                safe_get_full_optimizer_state(p, "exp_avg_sq"),
            )
            for name, p in trainable
        }
    moments = {}
    for name, p in trainable:
        state = optimizer.state.get(p)
        if state and "exp_avg" in state:
            moments[name] = (state["exp_avg"], state["exp_avg_sq"])
    return moments


def _adapter_key(name: str) -> str:
    # peft names a parameter "<...>.lora_A.<adapter>.weight"; the adapter name varies between a
    # training run ("default") and a later load, so the key drops it.
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("lora_A", "lora_B") and i + 1 < len(parts):
            return ".".join(parts[: i + 1] + parts[i + 2 :])
    return name


def check_checkpoint(path: str | Path) -> Path:
    """`path` if it is a scoder checkpoint (a LoRA adapter and its training info), else one clear
    error saying what it is instead."""
    path = Path(path)
    if (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{path} holds full fine-tuned weights (train.lora=false): load it as a model "
            "directory; influence and multi-checkpoint sampling need LoRA checkpoints"
        )
    if not (path / "adapter_config.json").is_file() or not (path / CHECKPOINT_INFO).is_file():
        raise CheckpointError(
            f"{path} is not a scoder checkpoint (needs adapter_config.json and {CHECKPOINT_INFO})"
        )
    return path


def read_checkpoint(
    path: str | Path, model: nn.Module, *, missing_state: str = "error"
) -> Checkpoint:
    """The checkpoint's info and Adam state, keyed by the parameter names of `model` (the base
    model with this checkpoint's adapter attached, e.g. by `scoder.models.load_causal_lm`)."""
    from safetensors.torch import load_file

    path = check_checkpoint(path)
    info: dict[str, Any] = json.loads((path / CHECKPOINT_INFO).read_text())
    state: dict[str, AdamState] | None = None
    if (path / OPTIMIZER_FILE).is_file():
        tensors = load_file(str(path / OPTIMIZER_FILE))
        state = {}
        for name, _ in model.named_parameters():
            key = _adapter_key(name)
            if f"{key}.exp_avg" in tensors:
                state[name] = AdamState(
                    tensors[f"{key}.exp_avg"],
                    tensors[f"{key}.exp_avg_sq"],
                    int(info["step"]),
                    tuple(info.get("betas", (0.9, 0.999))),
                    float(info.get("eps", 1e-8)),
                )
    elif missing_state != "plain":
        raise CheckpointError(
            f"{path} has no {OPTIMIZER_FILE}: candidates cannot be Adam-preconditioned"
        )
    return Checkpoint(path, float(info["mean_lr"]), int(info["step"]), state)
