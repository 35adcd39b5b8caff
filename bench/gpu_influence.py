"""Influence features on a GPU: ours vs a LESS-style loop vs the LoRA SFT step, 7B-shaped, bf16.

One run (about 5 minutes on an H100/H200, `--budget-s` stops it early) produces every figure the
influence issue asks for:

1. gate: our projected pairwise cosines track the exact ones, plain and Adam-preconditioned;
2. speed and peak memory per arm at one micro-batch (8 x 1,024 tokens), interleaved rounds:
   SFT step (forward + backward + AdamW, HF's loss: what TRL trains), ours plain (D_p's path),
   ours Adam (the candidates' path), ours plain with gradient checkpointing, LESS-style (batch 1,
   `loss.backward()` per sample, flatten, dense projection generated blockwise on the GPU);
3. the CUDA default: the micro-batch `cuda_batch_tokens` sizes from its probe, its speed and peak;
4. the largest micro-batch (in 1,024-token samples) that fits in 80 GB and in the whole card, for
   ours, ours with checkpointing and the SFT step (80 GB emulated with
   `torch.cuda.set_per_process_memory_fraction`).

A random-weight model in the shape of Qwen2.5-Coder-7B (weights do not change speed or memory),
LoRA r=8 on q/k/v/o with random B matrices, random token samples (a quarter prompt, the rest
response), Adam moments from one real AdamW step. Every figure is printed and appended as a JSON
line to $OUT/gpu_influence.jsonl (OUT defaults to the current folder).

    python bench/gpu_influence.py            # needs a CUDA GPU with ~40 GB free
    python bench/gpu_influence.py --tiny     # a small CPU smoke run of this script
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from scoder.influence import (
    AdamState,
    Example,
    GradientFeaturizer,
    cuda_batch_tokens,
    lora_modules,
)

START = time.time()
OUT = Path(os.environ.get("OUT", "."))


def record(stage: str, **figures) -> None:
    print(f"[{time.time() - START:6.1f} s] {stage}: {figures}", flush=True)
    with open(OUT / "gpu_influence.jsonl", "a") as f:
        f.write(json.dumps({"stage": stage, **figures}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--budget-s", type=float, default=420, help="skip stages after this")
    ap.add_argument("--tiny", action="store_true", help="a small CPU smoke run of this script")
    args = ap.parse_args()
    cuda = not args.tiny
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    OUT.mkdir(parents=True, exist_ok=True)

    shape = (
        dict(vocab_size=1000, hidden_size=128, intermediate_size=256, num_attention_heads=4)
        if args.tiny
        else dict(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_attention_heads=28
        )
    )
    config = Qwen2Config(
        **shape, num_hidden_layers=args.layers, num_key_value_heads=4, max_position_embeddings=32768
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-3)
    gen = torch.Generator().manual_seed(0)

    def samples(n: int) -> list[Example]:
        out = []
        for _ in range(n):
            ids = torch.randint(0, config.vocab_size, (args.length,), generator=gen).tolist()
            out.append(Example(ids[: args.length // 4], ids[args.length // 4 :]))
        return out

    examples = samples(args.samples)
    tokens = args.samples * args.length

    def sft_batch(batch: list[Example]) -> dict[str, torch.Tensor]:
        ids = torch.tensor([e.prompt_ids + e.response_ids for e in batch], device=device)
        labels = ids.clone()
        labels[:, : args.length // 4] = -100
        return {"input_ids": ids, "labels": labels}

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=1e-9)

    def sft_step(batch: list[Example]) -> None:
        model(**sft_batch(batch)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    sft_step(examples[:2])  # one real step: Adam moments for the candidates' path
    model.eval()
    by_id = {id(p): n for n, p in params.items()}
    state = {
        by_id[id(p)]: AdamState(s["exp_avg"], s["exp_avg_sq"], int(s["step"]))
        for p, s in opt.state.items()
    }
    common = dict(dim=args.dim, seed=0, max_length=args.length, optimizer_state=state)
    featurizer = GradientFeaturizer(model, **common)
    checkpointed = GradientFeaturizer(model, **common, gradient_checkpointing=True)
    record(
        "environment",
        device=torch.cuda.get_device_name() if cuda else "cpu",
        memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if cuda
        else None,
        torch=torch.__version__,
        parameters_b=round(sum(p.numel() for p in model.parameters()) / 1e9, 2),
        featurizer=featurizer.describe(),
        micro_batch=f"{args.samples} x {args.length} tokens",
    )

    # 1. gate
    exact = GradientFeaturizer(model, **{**common, "dim": 10**12})
    iu = np.triu_indices(4, 1)
    for kind, pre in (("plain", False), ("adam", True)):
        e = exact.features(examples[:4], precondition=pre).vectors
        o = featurizer.features(examples[:4], precondition=pre).vectors
        corr = float(np.corrcoef((o @ o.T)[iu], (e @ e.T)[iu])[0, 1])
        record(
            f"gate {kind}",
            ours=np.round((o @ o.T)[iu], 4).tolist(),
            exact=np.round((e @ e.T)[iu], 4).tolist(),
            correlation=round(corr, 4),
        )

    names = list(lora_modules(model))

    def less_style(block: int = 1 << 16) -> None:
        for e in examples:
            model.zero_grad(set_to_none=True)
            model(**sft_batch([e])).loss.backward()
            flat = torch.cat([params[n].grad.flatten().float() for n in names])
            g = torch.Generator(device=device).manual_seed(0)
            out = torch.zeros(args.dim, device=device)
            for s in range(0, flat.numel(), block):
                part = flat[s : s + block]
                out += part @ torch.randn(part.numel(), args.dim, generator=g, device=device)
            (out / math.sqrt(args.dim)).cpu()
        model.zero_grad(set_to_none=True)

    def timed(fn) -> tuple[float, float]:
        sync()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        sync()
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        return time.perf_counter() - start, peak

    # 2. arms at one micro-batch
    arms = {
        "SFT step": lambda: sft_step(examples),
        "ours, plain": lambda: featurizer.features(examples),
        "ours, Adam": lambda: featurizer.features(examples, precondition=True),
        "ours, plain, checkpointing": lambda: checkpointed.features(examples),
        "LESS-style": less_style,
    }
    for fn in arms.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    peaks: dict[str, float] = {}
    for r in range(args.rounds):
        for name in list(arms) if r % 2 == 0 else list(reversed(arms)):
            seconds, peaks[name] = timed(arms[name])
            times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in arms:
        record(
            f"arm {name}",
            seconds=[round(t, 3) for t in times[name]],
            tokens_per_s=round(tokens / med[name]),
            peak_gib=round(peaks[name], 2),
        )
    record(
        "ratios",
        ours_vs_less=round(med["LESS-style"] / med["ours, plain"], 2),
        plain_fraction_of_sft=round(med["SFT step"] / med["ours, plain"], 3),
        adam_fraction_of_sft=round(med["SFT step"] / med["ours, Adam"], 3),
        checkpointing_fraction_of_sft=round(med["SFT step"] / med["ours, plain, checkpointing"], 3),
        peak_ours_over_sft=round(peaks["ours, Adam"] / peaks["SFT step"], 3) if cuda else None,
    )
    if not cuda:
        return

    # 3. the CUDA default
    chosen = cuda_batch_tokens(featurizer, examples[:4])
    n = max(1, chosen // args.length)
    batch = samples(n)
    seconds, peak = timed(lambda: featurizer.features(batch, precondition=True))
    try:
        sft_seconds, sft_peak = timed(lambda: sft_step(batch))
    except torch.OutOfMemoryError:
        sft_seconds, sft_peak = None, None
        opt.zero_grad(set_to_none=True)
    record(
        "CUDA default",
        batch_tokens=chosen,
        samples=n,
        ours_adam_tokens_per_s=round(n * args.length / seconds),
        ours_peak_gib=round(peak, 2),
        sft_tokens_per_s=round(n * args.length / sft_seconds) if sft_seconds else "out of memory",
        sft_peak_gib=round(sft_peak, 2) if sft_peak else None,
    )

    # 4. the largest micro-batch that fits
    total = torch.cuda.get_device_properties(0).total_memory
    fit_arms = {
        "ours": lambda b: featurizer.features(b, precondition=True),
        "ours, checkpointing": lambda b: checkpointed.features(b, precondition=True),
        "SFT step": sft_step,
    }
    for budget_gib in (80, total / 2**30):
        if time.time() - START > args.budget_s:
            record("skipped", reason=f"budget {args.budget_s} s reached before {budget_gib} GiB")
            break
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gib * 2**30 / total))
        found = {}
        for name, fn in fit_arms.items():
            fits, fails, n = 0, None, 8
            while fails is None or fails - fits > max(1, fits // 4):
                if time.time() - START > args.budget_s or n > 512:
                    break
                try:
                    torch.cuda.empty_cache()
                    fn(samples(n))
                    sync()
                    fits = n
                except torch.OutOfMemoryError:
                    fails = n
                    opt.zero_grad(set_to_none=True)
                    model.zero_grad(set_to_none=True)
                n = n * 2 if fails is None else (fits + fails) // 2
            found[name] = {"fits": fits, "fails": fails, "tokens": fits * args.length}
        record(f"largest micro-batch in {budget_gib:.0f} GiB", **found)
    torch.cuda.set_per_process_memory_fraction(1.0)


if __name__ == "__main__":
    main()
