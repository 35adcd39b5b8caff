"""One OpenAI backend over two `scoder serve` endpoints vs over one.

The embedded SmolLM2-135M-Instruct behind two `scoder serve` processes, synthesis-shaped work: 24
real OSS-Instruct prompts (prefilled, as synthesis sends them to a server that continues an
answer), greedy, the same token budget. "one": `OpenAIBackend(base_url=A)`; "two":
`OpenAIBackend(base_url=[A, B])`, requests spread by load. Rounds interleave (one/two, then
two/one); the figure is the median tokens/s of each and the median per-round ratio. Greedy, so
both must give the same text.

On a machine with one accelerator (or a few CPU cores) per server the ratio approaches 2; on the
2-core CPU machines here both servers share the same two cores, so it shows the overhead of the
pool rather than a speed-up.

    .venv/bin/python bench/bench_endpoints.py
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import scoder_serve  # noqa: E402

from scoder.config import SeedsConfig  # noqa: E402
from scoder.models import SamplingParams  # noqa: E402
from scoder.models.openai_backend import OpenAIBackend  # noqa: E402
from scoder.seeds import mine_seeds  # noqa: E402
from scoder.templates import OSS_INSTRUCT_V1  # noqa: E402


def timed(backend: OpenAIBackend, chats: list, params: SamplingParams) -> tuple[float, list[str]]:
    """Completion tokens/s of one generate call, and its texts."""
    before = backend.usage["completion_tokens"]
    start = time.perf_counter()
    out = backend.generate(chats, 1, params)
    seconds = time.perf_counter() - start
    return (backend.usage["completion_tokens"] - before) / seconds, [c[0].text for c in out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16, help="max_concurrency, per endpoint")
    args = ap.parse_args()

    seeds, _ = mine_seeds(
        SeedsConfig(max_seeds=args.prompts, max_lines=25, max_chars=1000), random_seed=0
    )
    chats = [OSS_INSTRUCT_V1.chat(s.text, prefill=True) for s in seeds]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    with contextlib.ExitStack() as stack:
        a, _ = stack.enter_context(scoder_serve(None, "smol"))
        b, _ = stack.enter_context(scoder_serve(None, "smol"))
        backends = {
            "one": OpenAIBackend(base_url=a, model="smol", max_concurrency=args.concurrency),
            "two": OpenAIBackend(base_url=[a, b], model="smol", max_concurrency=args.concurrency),
        }
        for backend in backends.values():
            backend.capabilities()  # the probe is not part of the timing
        print(
            f"{len(chats)} prompts, max_new_tokens={args.max_new_tokens}, greedy, "
            f"max_concurrency={args.concurrency} per endpoint, {args.rounds} rounds\n",
            flush=True,
        )
        print("| round | order | one endpoint tok/s | two endpoints tok/s | ratio | same text |")
        print("|---|---|---|---|---|---|")
        rates: dict[str, list[float]] = {"one": [], "two": []}
        ratios = []
        for r in range(args.rounds):
            order = ["one", "two"] if r % 2 == 0 else ["two", "one"]
            texts = {}
            for name in order:
                rate, texts[name] = timed(backends[name], chats, params)
                rates[name].append(rate)
            ratios.append(rates["two"][-1] / rates["one"][-1])
            same = sum(x == y for x, y in zip(texts["one"], texts["two"]))
            print(
                f"| {r + 1} | {'/'.join(order)} | {rates['one'][-1]:.1f} | {rates['two'][-1]:.1f} "
                f"| {ratios[-1]:.2f} | {same}/{len(chats)} |",
                flush=True,
            )
        print(
            f"| median | | {statistics.median(rates['one']):.1f} | "
            f"{statistics.median(rates['two']):.1f} | {statistics.median(ratios):.2f} | |"
        )
        spread = backends["two"].usage["per_endpoint"]
        print(f"\nrequests per endpoint (two): {', '.join(str(n) for n in spread.values())}")


if __name__ == "__main__":
    main()
