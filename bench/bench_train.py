"""Training throughput: packed vs padded batches, one run, interleaved rounds.

Model: the embedded SmolLM2-135M-Instruct (or --model, e.g. a 7B on a GPU), LoRA r=8 on q/k/v/o
via `scoder.train.build_trainer` (TRL SFTTrainer, completion-only loss). Data: the first
--examples D_p samples shipped with scoder (MBPP train turned into synthesizer examples: the
synthesis prompt + seed -> problem, solution, tests; 500-900 tokens each, so lengths vary as they
do in practice).

Arms, on the same examples, one epoch each, every arm in a fresh process (so peak RSS is its own):
- padded: batches of --batch-size examples, padded to the longest in the batch;
- packed: TRL best-fit-decreasing packing into rows of --max-length tokens, padding-free
  (position_ids restart per example; attention never crosses examples, tested in
  tests/test_train_masking.py).

Reported: real tokens per second (prompt + response tokens of the examples, never padding; the
same count for both arms), the train step time, and peak RSS of the worker process. bf16 on CUDA,
fp32 on CPU (scoder's defaults). On a GPU this is also the "bf16 LoRA step" check:

    .venv/bin/python bench/bench_train.py                    # CPU, embedded model
    python bench/bench_train.py --device cuda --model DIR --examples 64 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

ARMS = ("padded", "packed")


def cpu_name() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def worker(args: argparse.Namespace) -> dict:
    import torch

    from scoder.config import load_config
    from scoder.models import load_causal_lm, load_tokenizer, resolve_model
    from scoder.train import build_examples, build_trainer, drop_untrainable

    rows = [
        json.loads(line)
        for line in (resources.files("scoder") / "data" / "dp_mbpp_train.jsonl")
        .read_text()
        .splitlines()
    ][: args.examples]
    config = load_config(
        None,
        [
            f"run_dir={args.tmp}",
            f"model.device={args.device}",
            *([f"model.name={args.model}"] if args.model else []),
            "train.epochs=1",
            f"train.batch_size={args.batch_size if args.arm == 'padded' else 1}",
            f"train.max_length={args.max_length}",
            f"train.packing={args.arm == 'packed'}",
        ],
    )
    ref = resolve_model(config.model.name)
    tokenizer = load_tokenizer(ref)
    examples, dropped = drop_untrainable(
        build_examples(rows, "synthesizer", config.synthesis.template, "dp"),
        tokenizer,
        args.max_length,
    )
    model = load_causal_lm(ref, device=args.device)
    device, dtype = model.device, model.dtype
    trainer = build_trainer(config, model, tokenizer, examples, Path(args.tmp))
    loader = trainer.get_train_dataloader()
    batches = list(loader)
    # padded rows count their attention mask; padding-free packed rows hold no padding at all
    real = sum(
        int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
        for b in batches
    )
    computed = sum(b["input_ids"].numel() for b in batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "arm": args.arm,
        "examples": len(examples),
        "steps": trainer.state.global_step,
        "real_tokens": real,
        "computed_tokens": computed,
        "seconds": seconds,
        "tokens_per_s": real / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else None,
        "dtype": str(dtype),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Hub id or directory (default: embedded).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--tmp", default="/tmp/scoder-bench-train", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for round_ in range(1, args.rounds + 1):
        for arm in ARMS:
            cmd = [sys.executable, __file__, "--arm", arm]
            for key in ("model", "device", "examples", "batch_size", "max_length"):
                if getattr(args, key) is not None:
                    cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                sys.exit(f"{arm} worker failed:\n{done.stderr[-3000:]}")
            result = json.loads(line[-1].removeprefix("RESULT "))
            results[arm].append(result)
            print(
                f"round {round_} {arm:7s} {result['tokens_per_s']:8.1f} tok/s "
                f"({result['real_tokens']} real of {result['computed_tokens']} computed tokens, "
                f"{result['steps']} steps, {result['seconds']:.1f} s, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB)",
                flush=True,
            )
    med = {arm: statistics.median(r["tokens_per_s"] for r in results[arm]) for arm in ARMS}
    ratios = [
        p["tokens_per_s"] / q["tokens_per_s"] for p, q in zip(results["packed"], results["padded"])
    ]
    print(
        json.dumps(
            {
                "median_tokens_per_s": med,
                "packed_over_padded_per_round": ratios,
                "median_ratio": statistics.median(ratios),
                "peak_rss_mib": {arm: max(r["peak_rss_mib"] for r in results[arm]) for arm in ARMS},
                "peak_cuda_mib": {arm: results[arm][0]["peak_cuda_mib"] for arm in ARMS},
                "device": results["padded"][0]["device"],
                "dtype": results["padded"][0]["dtype"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
