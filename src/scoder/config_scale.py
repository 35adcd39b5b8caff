"""Config sections of where and on how many processes work runs: they never change what is
computed, so no step's identity holds them (`TRAIN_HOW_NOT_WHAT`; the executor is read by no
step)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """A config section: unknown keys are errors, and so are bad values set later."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DistributedConfig(Section):
    """Training on several processes (one per GPU; CPU processes over gloo), launched by scoder
    (torchrun, or `accelerate launch` with a config file of yours). The global batch stays
    train.batch_size x grad_accum, split over the processes, so the steps are the same."""

    processes: int = Field(default=1, ge=1, description="Processes per node; 1 = this process.")
    strategy: Literal["ddp", "fsdp", "zero2", "zero3"] = Field(
        default="ddp", description="ddp; fsdp (full shard); DeepSpeed ZeRO-2 or ZeRO-3."
    )
    accelerate_config: Path | None = Field(
        default=None,
        description="Launch with `accelerate launch --config_file` this file instead (e.g. "
        "several nodes); its distributed settings win over strategy.",
    )


# Settings of how a training runs, not of what it computes: changing them re-runs nothing.
TRAIN_HOW_NOT_WHAT = {
    "gradient_checkpointing",
    "attn_implementation",
    "distributed",
    "resume_points",
}


class ExecutorConfig(Section):
    """Where the parallel stages run: here, or as Ray tasks (`pip install 'scoder[ray]'`): sandbox
    execution over the cluster's CPUs, gradient features one task per GPU. Not part of any
    step's identity: the outputs are the same either way."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(
        default=None,
        description='ray: a running cluster ("auto", "ray://head:10001"); none = start a local '
        "one on this machine.",
    )
    num_cpus: int | None = Field(
        default=None, ge=1, description="ray, local cluster: CPUs it may use (none: all)."
    )
    generation_actors: int | None = Field(
        default=None,
        ge=0,
        description="ray: in-process generation (backend transformers) as this many actors, "
        "each a copy of the model; none = one per GPU of the cluster (none without GPUs); 0 = here.",
    )
    max_retries: int = Field(
        default=3, ge=0, description="ray: times a task whose worker died is run again."
    )
