"""Influence features: scoder's batched per-sample gradients vs a LESS-style loop, one run.

Model: the embedded SmolLM2-135M-Instruct with LoRA (r=8 on q/k/v/o, the LoRA B matrices set to
small random values, as after some training, so that every gradient is non-zero). Samples: MBPP
train tasks turned into synthesizer training examples (synthesis prompt + seed -> problem,
solution, tests), truncated to --max-length tokens.

Arms, on the same samples:
- LESS-style: batch 1, one backward per sample, flatten the LoRA gradient, dense Gaussian
  projection to d generated block by block from a seed at every call (as TRAK's projector does:
  the P x d matrix is never stored);
- ours: `GradientFeaturizer.features` (micro-batches, hooks + einsum, SRHT projection);
- ours with micro-batch 1 (what batching alone buys, the projection being the same);
- for reference, a LoRA SFT training step (forward + backward + Adam) on the same micro-batches:
  a per-sample-gradient pass costs about one training step, so that is the practical floor.

Correctness gate first: each arm's pairwise cosines must track the exact (unprojected) cosines.

    .venv/bin/python bench/bench_influence.py
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from scoder.influence import Example, GradientFeaturizer, lora_modules
from scoder.models import resolve_model
from scoder.templates import OSS_INSTRUCT_V1


def mbpp_examples(path: Path, tokenizer, count: int) -> list[Example]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if 601 <= r["task_id"] <= 974][:count]
    out = []
    for r in rows:
        chat = OSS_INSTRUCT_V1.chat(r["code"])
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        answer = (
            f"### Problem\n{r['text']}\n\n### Solution\n```python\n{r['code']}\n```\n\n"
            f"### Tests\n```python\n" + "\n".join(r["test_list"]) + "\n```"
        )
        out.append(
            Example(
                prompt_ids=tokenizer(prompt, add_special_tokens=False)["input_ids"],
                response_ids=tokenizer(answer, add_special_tokens=False)["input_ids"]
                + [tokenizer.eos_token_id],
            )
        )
    return out


def less_style(
    model, examples, dim: int, seed: int, max_length: int, block: int = 4096
) -> np.ndarray:
    """Batch 1, backward per sample, flatten, blockwise-generated dense Gaussian projection."""
    names = list(lora_modules(model))
    params = dict(model.named_parameters())
    rows = []
    for ex in examples:
        ids = (ex.prompt_ids + ex.response_ids)[:max_length]
        mask = ([0] * len(ex.prompt_ids) + [1] * len(ex.response_ids))[:max_length]
        x = torch.tensor([ids])
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=x).logits.float()
        losses = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="none")
        (losses * torch.tensor(mask[1:], dtype=torch.float32)).sum().backward()
        flat = torch.cat([params[n].grad.flatten() for n in names])
        projected = torch.zeros(dim)
        gen = torch.Generator().manual_seed(seed)
        for start in range(0, flat.numel(), block):
            part = flat[start : start + block]
            projected += part @ torch.randn(part.numel(), dim, generator=gen)
        projected /= math.sqrt(dim)
        rows.append((projected / projected.norm()).numpy())
    model.zero_grad(set_to_none=True)
    return np.vstack(rows)


def ours(featurizer: GradientFeaturizer, examples, micro_batch: int) -> np.ndarray:
    return np.vstack(
        [
            featurizer.features(examples[i : i + micro_batch]).vectors
            for i in range(0, len(examples), micro_batch)
        ]
    )


def sft_steps(model, featurizer: GradientFeaturizer, examples, micro_batch: int) -> None:
    """Forward + backward + Adam step on the same micro-batches (summed response-token loss)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    for i in range(0, len(examples), micro_batch):
        # per_sample_gradients runs exactly the training forward/backward; the step is the extra
        featurizer.per_sample_gradients(examples[i : i + micro_batch])
        opt.step()


def cos_track(features: np.ndarray, exact: np.ndarray) -> float:
    iu = np.triu_indices(len(exact), 1)
    return float(np.corrcoef((features @ features.T)[iu], (exact @ exact.T)[iu])[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--mbpp", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mbpp.jsonl"
    )
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    ref = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
    )
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-3)
    model.eval()
    examples = mbpp_examples(args.mbpp, tokenizer, args.samples)
    featurizer = GradientFeaturizer(
        model, dim=args.dim, seed=0, max_length=args.max_length, pad_token_id=tokenizer.pad_token_id
    )
    tokens = sum(min(len(e.prompt_ids) + len(e.response_ids), args.max_length) for e in examples)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"model {ref.id} + LoRA: {featurizer.describe()}")
    print(
        f"{len(examples)} MBPP samples, {tokens} tokens, d={args.dim}, micro-batch {args.micro_batch}",
        flush=True,
    )

    exact = ours(
        GradientFeaturizer(
            model, dim=10**12, max_length=args.max_length, pad_token_id=tokenizer.pad_token_id
        ),
        examples,
        args.micro_batch,
    )
    ours_f = ours(featurizer, examples, args.micro_batch)
    less_f = less_style(model, examples, args.dim, 0, args.max_length)
    gate_ours, gate_less = cos_track(ours_f, exact), cos_track(less_f, exact)
    print(
        f"gate: pairwise cosines vs exact, correlation ours {gate_ours:.4f}, LESS-style {gate_less:.4f}"
    )
    if not min(gate_ours, gate_less) >= 0.95:  # NaN fails too
        raise SystemExit("error: projected cosines do not track the exact ones")

    arms = {
        "LESS-style loop": lambda: less_style(model, examples, args.dim, 0, args.max_length),
        "ours": lambda: ours(featurizer, examples, args.micro_batch),
        "ours, micro-batch 1": lambda: ours(featurizer, examples, 1),
        "SFT step (reference)": lambda: sft_steps(model, featurizer, examples, args.micro_batch),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    peaks: dict[str, int] = {}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        line = []
        for name in order:
            start = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - start)
            peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            line.append(f"{name} {times[name][-1]:.1f} s")
        print(f"round {r + 1}: " + ", ".join(line), flush=True)
    med = {name: statistics.median(v) for name, v in times.items()}
    for name in arms:
        print(
            f"{name}: {len(examples) / med[name]:.3f} samples/s, {tokens / med[name]:.0f} tokens/s"
        )
    print(f"ours vs LESS-style: {med['LESS-style loop'] / med['ours']:.2f}x")
    print(
        f"ours as a fraction of the SFT step's tokens/s: {med['SFT step (reference)'] / med['ours']:.2f}"
    )
    print(f"process peak RSS after each arm first ran (MiB, cumulative high-water mark): {peaks}")


if __name__ == "__main__":
    main()
