"""Launching a training on several processes, and what each strategy asks of the trainer.

`scoder train` with `train.distributed.processes > 1` writes the training's job (its settings
and inputs) to a file and starts `python -m scoder.train_rank JOB` once per process: through
`torch.distributed.run` (torchrun; every process on this node, GPUs or CPU processes over gloo),
or through `accelerate launch --config_file` a file of the user's (several nodes, or settings of
their own). The parent keeps the run directory's bookkeeping (the lock, the manifest); the
processes only train, and the first one writes the checkpoints and the result file the parent
reads back.

Strategies map to the trainer's own arguments, so transformers and accelerate do the
distributing: ddp (every process holds the model and Adam's state), fsdp (full shard, with the
state gathered for checkpoints by torch's distributed-checkpoint API), zero2/zero3 (DeepSpeed,
the state gathered by `deepspeed.utils.safe_get_full_optimizer_state`).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from scoder.config_scale import DistributedConfig
from scoder.errors import ScoderError
from scoder.progress import LOG


def trainer_arguments(dist: DistributedConfig, *, on_cuda: bool) -> dict[str, Any]:
    """The TrainingArguments fields of `dist`'s strategy (nothing extra for ddp)."""
    if dist.processes == 1 and dist.accelerate_config is None:
        return {}
    if dist.strategy == "fsdp":
        return {
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": {"use_orig_params": True, "sync_module_states": True},
        }
    if dist.strategy in ("zero2", "zero3"):
        stage = int(dist.strategy[-1])
        return {
            "deepspeed": {
                "zero_optimization": {"stage": stage, "overlap_comm": True},
                "bf16": {"enabled": "auto"},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
            }
        }
    return {"ddp_backend": "nccl" if on_cuda else "gloo", "ddp_find_unused_parameters": False}


def command(dist: DistributedConfig, job: Path) -> list[str]:
    """The command line that starts the training's processes."""
    entry = ["-m", "scoder.train_rank", str(job)]
    if dist.accelerate_config is not None:
        if not Path(dist.accelerate_config).is_file():
            raise ScoderError(
                f"train.distributed.accelerate_config: no such file: {dist.accelerate_config}"
            )
        launcher = [
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(dist.accelerate_config),
        ]
        return [sys.executable, *launcher, *entry]
    torchrun = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node"]
    torchrun += [str(dist.processes), "--master_addr", "127.0.0.1", "--master_port", str(_port())]
    return [sys.executable, *torchrun, *entry]


def run(dist: DistributedConfig, job: Path, log: Path) -> None:
    """Start the processes and wait for them; their output goes to `log`."""
    cmd = command(dist, job)
    for stale in job.parent.glob("error-rank-*.txt"):
        stale.unlink()
    LOG.info("training on %d processes: %s", dist.processes, " ".join(cmd))
    with log.open("ab") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        errors = sorted(job.parent.glob("error-rank-*.txt"))
        said = errors[0].read_text(errors="replace") if errors else None
        if said is None:  # died without a word (killed, out of memory): the log's end
            said = "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-15:])
        raise ScoderError(f"the distributed training failed (exit {code}): {said}; its log: {log}")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
