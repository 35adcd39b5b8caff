"""One round of synthesis + scoring on a real code model, in process and through servers.

Qwen2.5-Coder-0.5B-Instruct (`scoder fetch`) synthesizes from the same stdlib
seeds, then judges what it wrote, along four paths:

- in process (`TransformersBackend`; prefill; the judge's digits read by teacher forcing);
- `scoder serve` + the OpenAI backend (prefill through `continue_final_message`; judge logprobs);
- `transformers serve` (no prefill, no logprobs, no n: the judge is read as text), without and
  with its continuous batching.

Each path runs scoder's own stages (`run_synthesize`, `run_score`) with the sandbox gate on, and
reports the parse rate, the parsed candidates' own test pass rate, the judge's unscored rate and
generated tokens/s. Then in process and `scoder serve` generate the same greedy prompts in
interleaved rounds: the median ratio of their tokens/s is the HTTP path's overhead (target 0.9).
Every raw answer is written to --corpus-out for the parser corpora under tests/data.

    MODEL=$(.venv/bin/scoder fetch | tail -1)
    .venv/bin/python bench/bench_real_model.py --model "$MODEL"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import scoder_serve, transformers_serve  # noqa: E402

from scoder.config import SeedsConfig, load_config  # noqa: E402
from scoder.models import OpenAIBackend, SamplingParams, TransformersBackend, resolve_model  # noqa: E402
from scoder.score import run_score  # noqa: E402
from scoder.seeds import mine_seeds  # noqa: E402
from scoder.store import write_jsonl  # noqa: E402
from scoder.synthesize import run_synthesize  # noqa: E402
from scoder.templates import OSS_INSTRUCT_V1  # noqa: E402


def one_round(name: str, sets: list[str], seeds: Path, root: Path, backend=None) -> dict:
    """`scoder synthesize` + `scoder score` with this path's model sections; the figures."""
    cfg = load_config(None, [f"run_dir={root / name.replace(' ', '-')}", *sets])
    started = time.perf_counter()
    run, synth = run_synthesize(cfg, seeds, backend=backend)
    synth_s = time.perf_counter() - started
    kept = run.stage_dir("synthesize") / "kept.jsonl"
    started = time.perf_counter()
    _, scored = run_score(cfg, kept, run=run, backend=backend)
    score_s = time.perf_counter() - started
    parsed, dropped = synth.accepted, synth.rejected
    total = len(parsed) + len(dropped)
    executed = [c for c in scored.scored if c.execution is not None]
    stages = run.load_manifest()["stages"]
    judging, caps = stages["score"]["judging"], stages["synthesize"]["capabilities"]
    out = {
        "path": name,
        "samples": total,
        "parse_rate": round(len(parsed) / total, 3) if total else None,
        "drop_reasons": _count(c.drop.reason for c in dropped),
        "pass_rate": round(sum(c.execution.status == "passed" for c in executed) / len(executed), 3)
        if executed
        else None,
        "trusted_pass_rate": round(
            sum(c.execution.trusted_pass for c in executed) / len(executed), 3
        )
        if executed
        else None,
        "unscored_rate": judging["unscored_rate"],
        "judge_methods": judging["judge_methods"],
        "unscored_reasons": judging["unscored_reasons"],
        "prefill": bool(caps["continuation"]) and cfg.synthesis.prefill == "auto",
        "tokens": synth.generated_tokens,
        "tokens_per_s": round(synth.tokens_per_second, 2),
        "synthesize_s": round(synth_s, 1),
        "score_s": round(score_s, 1),
        "raw": [
            {
                "raw": c.raw_output,
                "finish": c.finish_reason,
                "verdict": c.drop.reason if c.drop else "parsed",
            }
            for c in [*parsed, *dropped]
        ],  # fmt: skip
        "judge_raw": [
            {
                "raw": c.judge.raw[-1] if c.judge and c.judge.raw else None,
                "method": c.judge.method if c.judge else None,
                "verdict": (c.judge.reason or "").split(":")[0]
                if c.judge and c.judge.scores is None
                else "scored",
            }
            for c in scored.scored
        ],  # fmt: skip
    }
    print(json.dumps({k: v for k, v in out.items() if k not in ("raw", "judge_raw")}), flush=True)
    return out


def write_corpora(results: list[dict], where: Path) -> None:
    """Add this run's distinct answers to the parser corpora (tests/data/real_outputs), each with
    the verdict the parser gives it now: review every new row by eye before committing it."""
    where.mkdir(parents=True, exist_ok=True)
    for name, key, rows_of in (
        ("synthesis.jsonl", "raw", lambda r: r["raw"]),
        ("judge.jsonl", "raw", lambda r: [j for j in r["judge_raw"] if j["method"] == "text"]),
    ):
        path = where / name
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
        seen = {row[key] for row in rows}
        for result in results:
            for item in rows_of(result):
                if item["raw"] is None or item["raw"] in seen:
                    continue  # in process and scoder serve sample the same text
                seen.add(item["raw"])
                row = {"path": result["path"].split(" (")[0], "id": f"{name[0]}{len(rows)}", **item}
                row.pop("method", None)
                rows.append(row)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def model_sets(section: str, **fields: str) -> list[str]:
    return [f"{section}.{k}={v}" for k, v in fields.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the converted Qwen2.5-Coder-0.5B directory")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    ap.add_argument("--throughput-tokens", type=int, default=96)
    ap.add_argument("--corpus-out", type=Path, default=Path("bench/real_model_outputs.json"))
    ap.add_argument("--skip", default="", help="comma-separated paths to leave out")
    ap.add_argument("--corpus-dir", type=Path, help="add the answers to these parser corpora")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    root = Path(tempfile.mkdtemp(prefix="bench-real-"))
    seed_rows = mine_seeds(
        SeedsConfig(max_seeds=args.seeds, min_lines=4, max_lines=20, max_chars=800), random_seed=0
    ).kept
    seeds = root / "seeds.jsonl"
    write_jsonl(seeds, seed_rows)
    common = [f"synthesis.n={args.n}", f"synthesis.max_new_tokens={args.max_new_tokens}",
              "synthesis.chunk_size=64", "score.sandbox.timeout_s=5", "decontaminate.near_duplicates=false"]  # fmt: skip
    local = dict(name=args.model, device="cpu")
    print(f"{len(seed_rows)} seeds x n={args.n}, max_new_tokens={args.max_new_tokens}", flush=True)

    results = []
    in_process = TransformersBackend(resolve_model(args.model), device="cpu", batch_size=8)
    with contextlib.ExitStack() as stack:
        if "in process" not in skip:
            results.append(one_round("in process", [*common, *model_sets("model", **local),
                                     *model_sets("score.judge", **local)], seeds, root, in_process))  # fmt: skip
        url, served = stack.enter_context(scoder_serve(args.model, "qwen"))
        remote = dict(backend="openai", base_url=url, name=served, max_concurrency="8")
        if "scoder serve" not in skip:
            results.append(one_round("scoder serve", [*common, *model_sets("model", **remote),
                                     *model_sets("score.judge", **remote)], seeds, root))  # fmt: skip
        for cb in (False, True):
            name = "transformers serve" + (" (continuous batching)" if cb else "")
            if name in skip:
                continue
            with transformers_serve(args.model, continuous_batching=cb) as (t_url, t_model):
                theirs = dict(backend="openai", base_url=t_url, name=t_model, max_concurrency="8")
                results.append(one_round(name, [*common, *model_sets("model", **theirs),
                                         *model_sets("score.judge", **theirs)], seeds, root))  # fmt: skip

        # the HTTP path's cost: the same greedy prompts, interleaved rounds
        chats = [OSS_INSTRUCT_V1.chat(s.text, prefill=True) for s in seed_rows]
        params = SamplingParams(temperature=0.0, max_new_tokens=args.throughput_tokens)
        http = OpenAIBackend(base_url=url, model=served, max_concurrency=len(chats))
        rates: dict[str, list[float]] = {"in process": [], "scoder serve": []}
        ratios: list[float] = []
        for r in range(args.rounds):
            order = [("in process", in_process), ("scoder serve", http)]
            for label, backend in order[:: -1 if r % 2 else 1]:
                started = time.perf_counter()
                out = backend.generate(chats, 1, params)
                tokens = sum(c[0].completion_tokens for c in out)
                rates[label].append(tokens / (time.perf_counter() - started))
            ratios.append(rates["scoder serve"][-1] / rates["in process"][-1])
            print(f"throughput round {r + 1}: in process {rates['in process'][-1]:.2f} tok/s, "
                  f"scoder serve {rates['scoder serve'][-1]:.2f} tok/s, ratio {ratios[-1]:.3f}",
                  flush=True)  # fmt: skip
    throughput = {
        "prompts": len(chats),
        "max_new_tokens": args.throughput_tokens,
        "in_process_tok_s": [round(x, 2) for x in rates["in process"]],
        "scoder_serve_tok_s": [round(x, 2) for x in rates["scoder serve"]],
        "median_ratio": round(statistics.median(ratios), 3) if ratios else None,
    }
    print(json.dumps(throughput), flush=True)
    print(
        "\n| path | prefill | parse rate | pass rate (trusted) | unscored | judge read by | tok/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['path']} | {'yes' if r['prefill'] else 'no'} | {r['parse_rate']} | "
              f"{r['pass_rate']} ({r['trusted_pass_rate']}) | {r['unscored_rate']} | "
              f"{', '.join(r['judge_methods'])} | {r['tokens_per_s']} |")  # fmt: skip
    args.corpus_out.write_text(json.dumps({"results": results, "throughput": throughput}, indent=1))
    print(f"raw outputs: {args.corpus_out}")
    if args.corpus_dir:
        write_corpora(results, args.corpus_dir)
    print(f"run directories: {root}")


if __name__ == "__main__":
    main()
