"""The HTTP path's overhead: `scoder serve` + the OpenAI backend vs the in-process backend.

The embedded SmolLM2-135M-Instruct, 16 real synthesis prompts, the same budget, greedy. In
process: `TransformersBackend.generate` over all prompts (batch 16). Over HTTP: `OpenAIBackend`
(16 requests in flight, the real openai client) against `scoder serve` on loopback, which batches
requests that arrive together. Same tokens expected; rounds interleave; the figure is the median
of the per-round ratio of samples/s (target >= 0.8).

    .venv/bin/python bench/bench_serve.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import scoder_serve  # noqa: E402

from scoder.config import SeedsConfig  # noqa: E402
from scoder.models import SamplingParams, resolve_model  # noqa: E402
from scoder.models.hf import TransformersBackend  # noqa: E402
from scoder.models.openai_backend import OpenAIBackend  # noqa: E402
from scoder.seeds import mine_seeds  # noqa: E402
from scoder.templates import OSS_INSTRUCT_V1  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    seeds, _ = mine_seeds(
        SeedsConfig(max_seeds=args.prompts, max_lines=25, max_chars=1000), random_seed=0
    )
    chats = [OSS_INSTRUCT_V1.chat(s.text, prefill=True) for s in seeds]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    with scoder_serve(None, "smol") as (url, _):
        local = TransformersBackend(resolve_model(None), device="cpu", batch_size=args.prompts)
        remote = OpenAIBackend(base_url=url, model="smol", max_concurrency=args.prompts)
        print(
            f"{len(chats)} prompts, max_new_tokens={args.max_new_tokens}, greedy, {args.rounds} rounds",
            flush=True,
        )
        ratios, rates = [], {"in process": [], "HTTP": []}
        for r in range(args.rounds):
            order = [("in process", local), ("HTTP", remote)]
            if r % 2:
                order.reverse()
            texts = {}
            for name, backend in order:
                start = time.perf_counter()
                out = backend.generate(chats, 1, params)
                rates[name].append(len(chats) / (time.perf_counter() - start))
                texts[name] = [c[0].text for c in out]
            ratios.append(rates["HTTP"][-1] / rates["in process"][-1])
            same = sum(a == b for a, b in zip(texts["in process"], texts["HTTP"]))
            print(
                f"round {r + 1}: in process {rates['in process'][-1]:.3f} samples/s, HTTP {rates['HTTP'][-1]:.3f} "
                f"samples/s, ratio {ratios[-1]:.2f}, same text {same}/{len(chats)}",
                flush=True,
            )
        print(
            f"median: in process {statistics.median(rates['in process']):.3f}, HTTP {statistics.median(rates['HTTP']):.3f} "
            f"samples/s; ratio {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
