"""Build the demo's D_p (src/scoder/data/dp_mbpp_train.jsonl) from MBPP's train split.

MBPP (Austin et al. 2021), tasks 601-974 (the train split), CC-BY-4.0. Each sample: the task's
problem, its reference solution, its asserts, and a seed window cut out of the solution by
`scoder teacher`'s derive route (random_seed 0).

    .venv/bin/python scripts/build_demo_dp.py ../shared/data/mbpp.jsonl
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from scoder.config import load_config
from scoder.teacher import run_teacher

OUT = Path(__file__).resolve().parents[1] / "src/scoder/data/dp_mbpp_train.jsonl"


def main(mbpp: str) -> None:
    rows = [json.loads(line) for line in Path(mbpp).read_text().splitlines() if line.strip()]
    train = [
        {
            "problem": r["text"],
            "solution": r["code"],
            "tests": r["test_list"],
            "task_id": r["task_id"],
        }
        for r in rows
        if 601 <= r["task_id"] <= 974
    ]
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "mbpp_train.jsonl"
        table.write_text("".join(json.dumps(r) + "\n" for r in train))
        cfg = load_config(
            None,
            [
                f"run_dir={tmp}/run",
                "teacher.route=derive",
                f"teacher.source={table}",
                "teacher.license=CC-BY-4.0 (MBPP, Austin et al. 2021)",
            ],
        )
        _, samples = run_teacher(cfg)
    lines = []
    for sample, row in zip(samples, train):
        record = sample.model_dump(mode="json", exclude={"drop"})  # every shipped sample is kept
        record["source"] = f"mbpp/task_id={row['task_id']}"
        record["row"] = row["task_id"]
        lines.append(json.dumps(record) + "\n")
    OUT.write_text("".join(lines))
    print(f"wrote {len(lines)} samples to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mbpp.jsonl")
