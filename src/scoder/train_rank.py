"""One process of a distributed training: `python -m scoder.train_rank JOB` (scoder.launch
starts one per process). It trains as the job file says; the first process writes the result
file the launching `scoder train` reads back."""

from __future__ import annotations

import sys
from pathlib import Path

from scoder.store import atomic_write_bytes
from scoder.train import FitJob, fit


def main(job_file: str) -> None:
    job = FitJob.model_validate_json(Path(job_file).read_text())
    fitted, trainer = fit(job)
    if trainer.is_world_process_zero():
        result = Path(job_file).with_name("result.json")
        atomic_write_bytes(result, fitted.model_dump_json(indent=2).encode())


if __name__ == "__main__":
    main(sys.argv[1])
