"""Judge throughput: batched judging (scoder's `judge`) vs one candidate at a time, one run.

Candidates are real: MBPP train problems (task ids 601-974) with their reference solutions and
asserts, as if synthesized from their own code. The judge is the embedded SmolLM2-135M-Instruct
(fp32, CPU). Baseline: `judge` called once per candidate (batch size 1, one generate call each);
ours: one `judge` call over all candidates at the CPU batch size. Both run the same prompts with
the same budget and the same retry rule; verdicts must agree (checked). Rounds interleave; the
figure is the median over rounds of the per-round ratio of candidates/s.

    .venv/bin/python bench/bench_judge.py --mbpp ../shared/data/mbpp.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from scoder.config import ScoreConfig
from scoder.judge import judge
from scoder.models import resolve_model
from scoder.models.hf import TransformersBackend
from scoder.records import Candidate, SeedSource


def mbpp_candidates(path: Path, count: int) -> list[Candidate]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if 601 <= r["task_id"] <= 974][:count]
    return [
        Candidate(
            id=f"mbpp-{r['task_id']}",
            seed_id=f"mbpp-{r['task_id']}",
            seed_text=r["code"],
            seed_source=SeedSource(kind="file", location=str(path), row=r["task_id"]),
            model="reference",
            model_digest="-",
            template="-",
            template_digest="-",
            sampling={},
            raw_output="",
            prompt_tokens=0,
            completion_tokens=0,
            finish_reason="stop",
            problem=r["text"],
            solution=r["code"],
            tests="\n".join(r["test_list"]),
        )
        for r in rows
    ]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--mbpp", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mbpp.jsonl"
    )
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    cands = mbpp_candidates(args.mbpp, args.candidates)
    cfg = ScoreConfig()
    backend = TransformersBackend(resolve_model(None), device="cpu")
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"judge {backend.model_id} ({backend.dtype}), {len(cands)} MBPP candidates, "
        f"max_new_tokens={cfg.max_new_tokens}, {args.rounds} rounds",
        flush=True,
    )

    def one_at_a_time():
        backend.batch_size = 1
        return [judge([c], backend, cfg)[0] for c in cands]

    def batched():
        backend.batch_size = args.batch_size
        return judge(cands, backend, cfg)

    ratios, rates = [], {"one at a time": [], f"batched ({args.batch_size})": []}
    for r in range(args.rounds):
        runs = [("one at a time", one_at_a_time), (f"batched ({args.batch_size})", batched)]
        if r % 2:
            runs.reverse()
        results = {}
        for name, fn in runs:
            start = time.perf_counter()
            judgements = fn()
            results[name] = (time.perf_counter() - start, judgements)
        (t_seq, j_seq), (t_bat, j_bat) = (
            results["one at a time"],
            results[f"batched ({args.batch_size})"],
        )
        same = [a.scores == b.scores and a.reason == b.reason for a, b in zip(j_seq, j_bat)]
        rates["one at a time"].append(len(cands) / t_seq)
        rates[f"batched ({args.batch_size})"].append(len(cands) / t_bat)
        ratios.append(t_seq / t_bat)
        print(
            f"round {r + 1}: one at a time {t_seq:.1f} s, batched {t_bat:.1f} s -> {t_seq / t_bat:.2f}x; "
            f"verdicts equal for {sum(same)}/{len(same)}; "
            f"scored {sum(j.scores is not None for j in j_bat)}/{len(cands)}",
            flush=True,
        )
    for name, values in rates.items():
        print(f"median {name}: {statistics.median(values):.3f} candidates/s")
    print(f"median ratio: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
