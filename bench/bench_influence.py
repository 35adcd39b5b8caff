"""Influence features: scoder's batched per-sample gradients vs a LESS-style loop, one run.

Model: the embedded SmolLM2-135M-Instruct with LoRA (r=8 on q/k/v/o, the LoRA B matrices set to
small random values, as after some training, so that every gradient is non-zero), and Adam
moments from two real AdamW steps on the same samples. Samples: MBPP train tasks turned into
synthesizer training examples exactly as `scoder select` builds them (synthesis prompt + seed ->
problem, solution, tests; chat template; TRL's tokenization), truncated to --max-length tokens.

Arms, on the same samples, each sample's loss the mean over its response tokens (LESS):
- LESS-style, plain (D_p's path): batch 1, `model(**sample).loss.backward()`, flatten the LoRA
  gradient, dense Gaussian projection to d generated block by block from a seed at every call
  (as TRAK's projector does: the P x d matrix is never stored);
- LESS-style, Adam (the candidates' path): the same, with the Adam update direction taken from
  the flattened gradient before projecting;
- ours, plain and Adam: `GradientFeaturizer.features` at the CPU default (one sample at a time),
  and plain at micro-batch --micro-batch;
- for reference, a LoRA SFT training step (forward + backward + AdamW) on the same micro-batches:
  a per-sample-gradient pass costs about one training step, so that is the practical floor.

Peak memory per arm: the process's resident set sampled every 5 ms while the arm runs, minus the
resident set when it starts (on a CPU there is no allocator statistic to read).

Correctness gate first: each arm's pairwise cosines must track the exact (unprojected) cosines.

    .venv/bin/python bench/bench_influence.py
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from scoder.config import load_config
from scoder.influence import AdamState, GradientFeaturizer, adam_precondition, lora_modules
from scoder.models import resolve_model
from scoder.select import training_examples


def mbpp_examples(path: Path, tokenizer, count: int):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if 601 <= r["task_id"] <= 974][:count]
    rows = [
        {
            "seed_text": r["code"],
            "problem": r["text"],
            "solution": r["code"],
            "tests": "\n".join(r["test_list"]),
        }
        for r in rows
    ]
    return training_examples(rows, tokenizer, load_config(None, []), str(path))


def adam_state(model, featurizer, examples) -> dict[str, AdamState]:
    """Adam moments of two real AdamW steps on the samples, keyed by parameter name."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=1e-6)
    for step in range(2):
        ex = examples[step % len(examples)]
        ids = torch.tensor([(ex.prompt_ids + ex.response_ids)[: featurizer.max_length]])
        labels = torch.tensor(
            [([-100] * len(ex.prompt_ids) + ex.response_ids)[: featurizer.max_length]]
        )
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    by_id = {id(p): n for n, p in params.items()}
    return {
        by_id[id(p)]: AdamState(s["exp_avg"].clone(), s["exp_avg_sq"].clone(), int(s["step"]))
        for p, s in opt.state.items()
    }


def less_style(
    model,
    examples,
    dim: int,
    seed: int,
    max_length: int,
    state: dict[str, AdamState] | None = None,
    block: int = 4096,
) -> np.ndarray:
    """Batch 1, backward per sample (HF's mean loss), flatten, optional Adam direction,
    blockwise-generated dense Gaussian projection."""
    names = list(lora_modules(model))
    params = dict(model.named_parameters())
    rows = []
    for ex in examples:
        ids = (ex.prompt_ids + ex.response_ids)[:max_length]
        labels = ([-100] * len(ex.prompt_ids) + ex.response_ids)[:max_length]
        model.zero_grad(set_to_none=True)
        model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.backward()
        if state is None:
            flat = torch.cat([params[n].grad.flatten() for n in names])
        else:
            flat = torch.cat([adam_precondition(params[n].grad, state[n]).flatten() for n in names])
        projected = torch.zeros(dim)
        gen = torch.Generator().manual_seed(seed)
        for start in range(0, flat.numel(), block):
            part = flat[start : start + block]
            projected += part @ torch.randn(part.numel(), dim, generator=gen)
        projected /= math.sqrt(dim)
        rows.append((projected / projected.norm()).numpy())
    model.zero_grad(set_to_none=True)
    return np.vstack(rows)


def ours(
    featurizer: GradientFeaturizer, examples, micro_batch: int, precondition: bool = False
) -> np.ndarray:
    return np.vstack(
        [
            featurizer.features(examples[i : i + micro_batch], precondition=precondition).vectors
            for i in range(0, len(examples), micro_batch)
        ]
    )


def sft_steps(model, examples, micro_batch: int, max_length: int) -> None:
    """Forward + backward + AdamW step on the same micro-batches, HF's loss (what TRL trains)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-9)
    for i in range(0, len(examples), micro_batch):
        batch = examples[i : i + micro_batch]
        width = max(min(len(e.prompt_ids) + len(e.response_ids), max_length) for e in batch)
        ids, labels, attention = [], [], []
        for e in batch:
            row = (e.prompt_ids + e.response_ids)[:max_length]
            lab = ([-100] * len(e.prompt_ids) + e.response_ids)[:max_length]
            pad = width - len(row)
            ids.append(row + [0] * pad)
            labels.append(lab + [-100] * pad)
            attention.append([1] * len(row) + [0] * pad)
        model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(attention),
            labels=torch.tensor(labels),
        ).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


class PeakRss:
    """The resident set's high-water mark above its level at the start, sampled every 5 ms."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


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
    ap.add_argument("--rounds", type=int, default=3)
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
    common = dict(max_length=args.max_length, pad_token_id=tokenizer.pad_token_id)
    probe = GradientFeaturizer(model, dim=args.dim, seed=0, **common)
    state = adam_state(model, probe, examples)
    model.eval()
    featurizer = GradientFeaturizer(model, dim=args.dim, seed=0, optimizer_state=state, **common)
    tokens = sum(min(len(e.prompt_ids) + len(e.response_ids), args.max_length) for e in examples)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"model {ref.id} + LoRA: {featurizer.describe()}")
    print(
        f"{len(examples)} MBPP samples, {tokens} tokens, d={args.dim}, micro-batch {args.micro_batch}",
        flush=True,
    )

    exact_f = GradientFeaturizer(model, dim=10**12, optimizer_state=state, **common)
    gates = {}
    for kind, pre in (("plain", False), ("adam", True)):
        exact = ours(exact_f, examples, 1, pre)
        mine = ours(featurizer, examples, 1, pre)
        less = less_style(model, examples, args.dim, 0, args.max_length, state if pre else None)
        gates[kind] = (cos_track(mine, exact), cos_track(less, exact))
        print(
            f"gate ({kind}): pairwise cosines vs exact, correlation ours {gates[kind][0]:.4f}, "
            f"LESS-style {gates[kind][1]:.4f}"
        )
    if not min(min(g) for g in gates.values()) >= 0.95:  # NaN fails too
        raise SystemExit("error: projected cosines do not track the exact ones")

    L = args.max_length
    arms = {
        "LESS-style, plain": lambda: less_style(model, examples, args.dim, 0, L),
        "LESS-style, Adam": lambda: less_style(model, examples, args.dim, 0, L, state),
        "ours, plain": lambda: ours(featurizer, examples, 1),
        "ours, Adam": lambda: ours(featurizer, examples, 1, True),
        f"ours, plain, micro-batch {args.micro_batch}": lambda: ours(
            featurizer, examples, args.micro_batch
        ),
        "SFT step, micro-batch 1 (reference)": lambda: sft_steps(model, examples, 1, L),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    peaks: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        line = []
        for name in order:
            with PeakRss() as peak:
                start = time.perf_counter()
                arms[name]()
                times[name].append(time.perf_counter() - start)
            model.eval()
            peaks[name].append(peak.mib)
            line.append(f"{name} {times[name][-1]:.1f} s")
        print(f"round {r + 1}: " + ", ".join(line), flush=True)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(
        "| arm | " + " | ".join(f"round {i + 1}" for i in range(args.rounds)) + " | median "
        "samples/s | median tokens/s | peak RSS above start (MiB, max of rounds) |"
    )
    for name in arms:
        cells = " | ".join(f"{t:.1f} s" for t in times[name])
        print(
            f"| {name} | {cells} | {len(examples) / med[name]:.3f} | {tokens / med[name]:.0f} "
            f"| {max(peaks[name]):.0f} |"
        )
    sft = med["SFT step, micro-batch 1 (reference)"]
    print(f"ours vs LESS-style, plain: {med['LESS-style, plain'] / med['ours, plain']:.2f}x")
    print(f"ours vs LESS-style, Adam: {med['LESS-style, Adam'] / med['ours, Adam']:.2f}x")
    print(
        f"ours as a fraction of the SFT step's tokens/s: plain {sft / med['ours, plain']:.2f}, "
        f"Adam {sft / med['ours, Adam']:.2f}"
    )


if __name__ == "__main__":
    main()
