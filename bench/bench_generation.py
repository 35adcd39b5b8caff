"""Batched generation (scoder's backend) vs sequential `generate`, on the embedded model, one run.

Baseline: transformers' `model.generate` called once per prompt (no padding, no sharing), the
way a naive pipeline does it. Ours: `TransformersBackend.generate` over all prompts at a batch
size, with the template prefix the prompts share computed once; also shown without that sharing,
so the two effects can be told apart. Same synthesis prompts (stdlib seeds through the real
template), same token budget, greedy decoding, so every variant must produce the very same tokens
(checked), and only real tokens are counted (up to and including end-of-sequence, never padding).
Rounds interleave the variants; the figure is the median over rounds of the per-round ratio.

    .venv/bin/python bench/bench_generation.py            # CPU defaults
    .venv/bin/python bench/bench_generation.py --device cuda --prompts 128 --batch-sizes 16,64,128
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import defaultdict

import torch

from scoder.config import SeedsConfig
from scoder.models import SamplingParams, hf, resolve_model
from scoder.models.hf import TransformersBackend
from scoder.seeds import mine_seeds
from scoder.templates import OSS_INSTRUCT_V1


def sequential_generate(backend: TransformersBackend, chats, params) -> list[list[int]]:
    """The baseline: transformers' generate, one prompt at a time."""
    out = []
    for ids in backend.encode(chats):
        generated = backend.model.generate(
            input_ids=torch.tensor([ids], device=backend.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=backend.device),
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            pad_token_id=backend.tokenizer.pad_token_id,
            eos_token_id=backend.eos_ids,
        )[0, len(ids) :].tolist()
        stop = next((k for k, t in enumerate(generated) if t in backend.eos_ids), None)
        out.append(generated if stop is None else generated[: stop + 1])
    return out


def timed(backend: TransformersBackend, chats, params, variant) -> tuple[int, float, list[str]]:
    sync = torch.cuda.synchronize if backend.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    if variant == "sequential":
        tokens = sequential_generate(backend, chats, params)
        texts = [backend.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
        count = sum(len(t) for t in tokens)
    else:
        batch_size, share = variant
        backend.batch_size = batch_size
        hf.MIN_SHARED_PREFIX = 16 if share else 10**9
        out = backend.generate(chats, n=1, params=params)
        texts = [c[0].text for c in out]
        count = sum(c[0].completion_tokens for c in out)
    sync()
    return count, time.perf_counter() - start, texts


def label(variant) -> str:
    if variant == "sequential":
        return "sequential"
    return f"batch {variant[0]}" + ("" if variant[1] else " (no shared prefix)")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="8,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    args = ap.parse_args()

    seeds, _ = mine_seeds(
        SeedsConfig(max_seeds=args.prompts, max_lines=25, max_chars=1000), random_seed=0
    )
    chats = [OSS_INSTRUCT_V1.chat(s.text, prefill=True) for s in seeds]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    ref = resolve_model(args.model)
    backend = TransformersBackend(ref, device=args.device)
    variants = [(int(b), True) for b in args.batch_sizes.split(",")]
    variants.append((variants[-1][0], False))
    prompt_tokens = [len(ids) for ids in backend.encode(chats)]
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"device {backend.device}, torch {torch.__version__}"
    )
    print(
        f"model {ref.id} ({backend.dtype}), {len(chats)} prompts of {min(prompt_tokens)}-{max(prompt_tokens)} "
        f"tokens (shared template prefix: {backend._shared_prefix(backend.encode(chats))[0]}), "
        f"max_new_tokens={args.max_new_tokens}, greedy, {args.rounds} rounds",
        flush=True,
    )
    timed(
        backend, chats[:2], SamplingParams(temperature=0.0, max_new_tokens=4), variants[0]
    )  # warm-up

    rates: dict[str, list[float]] = defaultdict(list)
    ratios: dict[str, list[float]] = defaultdict(list)
    all_same = True
    for r in range(args.rounds):
        order = ["sequential", *variants]
        if r % 2:
            order.reverse()
        results = {label(v): timed(backend, chats, params, v) for v in order}
        seq_tokens, seq_s, seq_texts = results["sequential"]
        seq_rate = seq_tokens / seq_s
        rates["sequential"].append(seq_rate)
        line = [
            f"round {r + 1}: sequential {seq_tokens} tok in {seq_s:.1f} s = {seq_rate:.1f} tok/s"
        ]
        for v in variants:
            tokens, seconds, texts = results[label(v)]
            same = texts == seq_texts
            all_same &= same
            rate = tokens / seconds
            rates[label(v)].append(rate)
            ratios[label(v)].append(rate / seq_rate)
            line.append(
                f"{label(v)}: {tokens} tok in {seconds:.1f} s = {rate:.1f} tok/s "
                f"({rate / seq_rate:.2f}x, {'same tokens' if same else 'DIFFERENT tokens'})"
            )
        print("\n  ".join(line), flush=True)

    print("\nmedian over rounds:")
    print(f"  sequential: {statistics.median(rates['sequential']):.1f} tok/s")
    for v in variants:
        name = label(v)
        print(
            f"  {name}: {statistics.median(rates[name]):.1f} tok/s, ratio {statistics.median(ratios[name]):.2f}x"
        )
    if not all_same:
        raise SystemExit("error: a variant produced different tokens than sequential generate")


if __name__ == "__main__":
    main()
