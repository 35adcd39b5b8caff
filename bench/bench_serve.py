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
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

from scoder.config import SeedsConfig
from scoder.models import SamplingParams, resolve_model
from scoder.models.hf import TransformersBackend
from scoder.models.openai_backend import OpenAIBackend
from scoder.seeds import mine_seeds
from scoder.templates import OSS_INSTRUCT_V1


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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scoder.cli",
            "serve",
            "--port",
            str(port),
            "--served-model-name",
            "smol",
            "--device",
            "cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                time.sleep(0.2)
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
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
