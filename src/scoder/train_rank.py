"""One process of a distributed training: `python -m scoder.train_rank JOB` (scoder.launch
starts one per process). It trains as the job file says; the first process writes the result
file the launching `scoder train` reads back."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from scoder.errors import ScoderError
from scoder.store import atomic_write_bytes
from scoder.train import FitJob, fit


def main(job_file: str) -> None:
    job = FitJob.model_validate_json(Path(job_file).read_text())
    try:
        fitted, trainer = fit(job)
    except BaseException as exc:
        # what the launching process shows; the traceback goes on to the log
        rank = os.environ.get("RANK", "0")
        said = str(exc) if isinstance(exc, ScoderError) else f"{type(exc).__name__}: {exc}"
        error = Path(job_file).with_name(f"error-rank-{rank}.txt")
        atomic_write_bytes(error, said.encode())
        raise
    if trainer.is_world_process_zero():
        result = Path(job_file).with_name("result.json")
        atomic_write_bytes(result, fitted.model_dump_json(indent=2).encode())


if __name__ == "__main__":
    main(sys.argv[1])
