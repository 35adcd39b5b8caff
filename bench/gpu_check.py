"""The GPU checks of the generation backend, in one short script for a lent GPU machine.

Random weights in the shape of the embedded SmolLM2-135M-Instruct (its config and tokenizer are
enough: weights do not change speed), bf16 as `dtype: auto` picks on CUDA, the real synthesis
prompts. Checks and times:

1. greedy tokens of the batched backend (shared template prefix, left padding) vs plain
   `generate` one prompt at a time: how many prompts match exactly (bf16 can flip near-ties);
2. tokens/s of sequential `generate` vs the backend at several batch sizes, interleaved rounds.

    python bench/gpu_check.py --model-dir DIR_WITH_CONFIG_AND_TOKENIZER
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from scoder.models import SamplingParams
from scoder.models.hf import TransformersBackend
from scoder.models.loading import ModelRef
from scoder.templates import OSS_INSTRUCT_V1

SNIPPETS = [
    f"def function_{i}(values, scale={i}):\n"
    + "".join(f"    step_{k} = [v * scale + {k} for v in values]\n" for k in range(i % 6 + 1))
    + "    return sum(step_0)\n"
    for i in range(256)
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="16,64,128")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sequential-prompts", type=int, default=16)
    args = ap.parse_args()

    model_dir = Path(args.model_dir)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ref = ModelRef(
        id="random-smollm2-135m-shape", path=model_dir, digest="sha256:random", source="local"
    )
    backend = TransformersBackend(
        ref, device="auto", dtype="auto", model=model, tokenizer=tokenizer
    )
    print(torch.cuda.get_device_name(), "| backend:", backend.describe(), flush=True)

    chats = [OSS_INSTRUCT_V1.chat(s, prefill=True) for s in SNIPPETS[: args.prompts]]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)

    # 1. correctness on CUDA/bf16: batched + shared prefix vs plain generate
    few = chats[:16]
    backend.batch_size = 16
    batched = [
        c[0].text
        for c in backend.generate(few, 1, SamplingParams(temperature=0.0, max_new_tokens=32))
    ]
    plain = []
    for ids in backend.encode(few):
        out = model.generate(
            input_ids=torch.tensor([ids], device="cuda"),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=backend.eos_ids,
        )
        plain.append(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True))
    same = sum(a == b for a, b in zip(batched, plain))
    print(
        f"greedy batched (shared prefix) == plain generate: {same}/{len(few)} prompts", flush=True
    )
    sampled = backend.generate(
        few[:4], 4, SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=16, seed=1)
    )
    print("sampling n=4 works:", all(len(c) == 4 for c in sampled), flush=True)

    # 2. throughput
    def sequential() -> tuple[int, float]:
        torch.cuda.synchronize()
        start = time.perf_counter()
        tokens = 0
        for ids in backend.encode(chats[: args.sequential_prompts]):
            out = model.generate(
                input_ids=torch.tensor([ids], device="cuda"),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=backend.eos_ids,
            )
            tokens += out.shape[1] - len(ids)
        torch.cuda.synchronize()
        return tokens, time.perf_counter() - start

    def batched_run(batch_size: int) -> tuple[int, float]:
        backend.batch_size = batch_size
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = backend.generate(chats, 1, params)
        torch.cuda.synchronize()
        return sum(c[0].completion_tokens for c in out), time.perf_counter() - start

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rates: dict[str, list[float]] = {"sequential": [], **{f"batch {b}": [] for b in sizes}}
    for r in range(args.rounds):
        tokens, seconds = sequential()
        rates["sequential"].append(tokens / seconds)
        line = [
            f"round {r + 1}: sequential {tokens} tok in {seconds:.1f} s = {tokens / seconds:.0f} tok/s"
        ]
        for b in sizes:
            tokens, seconds = batched_run(b)
            rates[f"batch {b}"].append(tokens / seconds)
            line.append(
                f"batch {b}: {tokens} tok in {seconds:.1f} s = {tokens / seconds:.0f} tok/s"
            )
        print("\n  ".join(line), flush=True)
    seq = statistics.median(rates["sequential"])
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"median {name}: {rate:.0f} tok/s ({rate / seq:.1f}x sequential)")


if __name__ == "__main__":
    main()
