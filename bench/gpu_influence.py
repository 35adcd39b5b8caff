"""Influence features on a GPU: ours vs a LESS-style loop vs the LoRA SFT step, 7B-shaped, bf16.

A random-weight model in the shape of Qwen2.5-Coder-7B (weights do not change speed), LoRA r=8 on
q/k/v/o with random B matrices, random token samples (a quarter prompt, the rest response).
Correctness gate: our projected pairwise cosines track the exact ones. Then, interleaved rounds:
- SFT step: forward + backward + AdamW on the micro-batch (the practical floor);
- ours: `GradientFeaturizer.features` on the same micro-batch;
- LESS-style: batch 1, backward per sample, flatten, dense Gaussian projection generated block by
  block on the GPU from a seed at every call.

    python bench/gpu_influence.py            # needs a CUDA GPU with ~40 GB free
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from scoder.influence import Example, GradientFeaturizer, lora_modules


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--tiny", action="store_true", help="a small CPU smoke run of this script")
    args = ap.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

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
    model.eval()
    gen = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(args.samples):
        ids = torch.randint(0, config.vocab_size, (args.length,), generator=gen).tolist()
        examples.append(
            Example(prompt_ids=ids[: args.length // 4], response_ids=ids[args.length // 4 :])
        )
    tokens = args.samples * args.length
    featurizer = GradientFeaturizer(model, dim=args.dim, seed=0, max_length=args.length)
    print(
        torch.cuda.get_device_name() if device == "cuda" else "cpu",
        f"| {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params, "
        f"{featurizer.describe()}, {args.samples} x {args.length} tokens",
        flush=True,
    )

    # correctness gate on 4 samples
    exact = (
        GradientFeaturizer(model, dim=10**12, max_length=args.length).features(examples[:4]).vectors
    )
    ours4 = featurizer.features(examples[:4]).vectors
    iu = np.triu_indices(len(exact), 1)
    corr = np.corrcoef((ours4 @ ours4.T)[iu], (exact @ exact.T)[iu])[0, 1]
    print(
        f"gate: pairwise cosines ours vs exact: {np.round((ours4 @ ours4.T)[iu], 4)} vs "
        f"{np.round((exact @ exact.T)[iu], 4)} (corr {corr:.4f})",
        flush=True,
    )

    names = list(lora_modules(model))
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def sft_step():
        ids = torch.tensor([e.prompt_ids + e.response_ids for e in examples], device=device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def ours():
        featurizer.features(examples)

    def less_style(block: int = 1 << 16):
        for e in examples:
            ids = torch.tensor([e.prompt_ids + e.response_ids], device=device)
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=ids).logits.float()
            losses = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")
            losses[len(e.prompt_ids) - 1 :].sum().backward()
            flat = torch.cat([params[n].grad.flatten().float() for n in names])
            g = torch.Generator(device=device).manual_seed(0)
            out = torch.zeros(args.dim, device=device)
            for s in range(0, flat.numel(), block):
                part = flat[s : s + block]
                out += part @ torch.randn(part.numel(), args.dim, generator=g, device=device)
            (out / math.sqrt(args.dim)).cpu()
        model.zero_grad(set_to_none=True)

    arms = {"SFT step": sft_step, "ours": ours, "LESS-style": less_style}
    for fn in arms.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    peaks: dict[str, float] = {}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            sync()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            arms[name]()
            sync()
            times[name].append(time.perf_counter() - start)
            peaks[name] = (
                torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            )
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in order), flush=True
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in arms:
        print(
            f"{name}: {tokens / med[name]:.0f} tokens/s, {args.samples / med[name]:.2f} samples/s, "
            f"peak GPU memory {peaks[name]:.1f} GiB"
        )
    print(
        f"ours vs LESS-style: {med['LESS-style'] / med['ours']:.2f}x; "
        f"ours as a fraction of SFT tokens/s: {med['SFT step'] / med['ours']:.2f}"
    )


if __name__ == "__main__":
    main()
