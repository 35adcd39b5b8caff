"""Benchmark-overlap check: the n-gram index (`BenchmarkIndex.match`) vs a naive per-pair check.

Records: stdlib seeds (the default seed source) and the shipped D_p (MBPP train), checked against
HumanEval + MBPP+ + MBPP (test split). The naive check compares every record with every benchmark
task: shared n-grams by set intersection with the task's n-gram set, substring tests against each
of its texts. Same normalisation, same rules; the two must flag the same records (and name the
same task), or the benchmark fails. Rounds interleave the two; figures are medians over rounds.

    .venv/bin/python bench/bench_decontaminate.py --mbppplus ../shared/data/MbppPlus-pre-2023-11.jsonl \
        --mbpp ../shared/data/mbpp.jsonl
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from importlib import resources
from pathlib import Path

from scoder.config import SeedsConfig, load_config
from scoder.decontaminate import (
    CHECKED_FIELDS,
    BenchmarkIndex,
    Match,
    collapse,
    load_index,
    load_records,
    ngram_hashes,
    record_texts,
    word_form,
    words,
)
from scoder.seeds import mine_seeds


class NaiveChecker:
    """Every record against every task, with the index's rules and normalisation."""

    def __init__(self, index: BenchmarkIndex):
        self.index = index
        self.task_grams = [set() for _ in index.tasks]
        for gram, numbers in index.postings.items():
            for number in numbers:
                self.task_grams[number].add(gram)

    def match(self, texts: dict[str, str]) -> Match | None:
        ix = self.index
        prepared, grams = [], set()
        for field, raw in texts.items():
            tokens = words(raw)
            if tokens:
                prepared.append((field, word_form(tokens), len(collapse(raw))))
                grams |= ngram_hashes(tokens, ix.n)
        shared = [len(grams & task) for task in self.task_grams]
        order = sorted(range(len(shared)), key=lambda t: (-shared[t], t))
        for field, form, chars in prepared:
            for number in order:
                for i in ix.task_texts[number]:
                    t = ix.texts[i]
                    if form == t.words:
                        return Match("benchmark_substring", t.benchmark, t.task_id, field)
                    if (t.chars >= ix.min_chars and t.words in form) or (
                        chars >= ix.min_chars and form in t.words
                    ):
                        return Match("benchmark_substring", t.benchmark, t.task_id, field)
        best = order[0]
        if shared[best] >= ix.min_ngram_matches:
            bench, task_id = ix.tasks[best]
            return Match("benchmark_ngram", bench, task_id, "")
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mbppplus", type=Path, required=True)
    parser.add_argument("--mbpp", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=600, help="stdlib seeds to check")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    cfg = load_config(
        None, [f"benchmark_files.mbppplus={args.mbppplus}", f"benchmark_files.mbpp={args.mbpp}"]
    )
    started = time.perf_counter()
    index, info = load_index(cfg)
    build_s = time.perf_counter() - started
    naive = NaiveChecker(index)
    seeds, _ = mine_seeds(SeedsConfig(max_seeds=args.seeds), 0)
    dp_path = Path(str(resources.files("scoder") / "data" / "dp_mbpp_train.jsonl"))
    _, dp, _ = load_records(dp_path)
    items = [record_texts(s, CHECKED_FIELDS["seed"]) for s in seeds] + [
        record_texts(d, CHECKED_FIELDS["dp"]) for d in dp
    ]
    print(f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    names = ", ".join(f"{name} ({b['tasks']} tasks)" for name, b in info.items())
    print(f"benchmarks: {names}; index {index.size} built in {build_s:.2f} s")
    print(f"records: {len(seeds)} stdlib seeds + {len(dp)} D_p samples = {len(items)}")

    rates: dict[str, list[float]] = {"naive": [], "index": []}
    for round_ in range(args.rounds):
        results = {}
        for name, check in (("naive", naive.match), ("index", index.match)):
            started = time.perf_counter()
            results[name] = [check(texts) for texts in items]
            rates[name].append(len(items) / (time.perf_counter() - started))
        a = [(m.reason, m.task_id) if m else None for m in results["naive"]]
        b = [(m.reason, m.task_id) if m else None for m in results["index"]]
        if a != b:
            diff = sum(x != y for x, y in zip(a, b))
            raise SystemExit(f"round {round_ + 1}: naive and index disagree on {diff} records")
        flagged = sum(m is not None for m in b)
        print(
            f"round {round_ + 1}: naive {rates['naive'][-1]:.1f} rec/s, index "
            f"{rates['index'][-1]:.1f} rec/s, ratio {rates['index'][-1] / rates['naive'][-1]:.1f}x "
            f"({flagged} flagged, identical)"
        )
    ratios = [i / n for i, n in zip(rates["index"], rates["naive"])]
    print(
        f"median: naive {statistics.median(rates['naive']):.1f} rec/s, index "
        f"{statistics.median(rates['index']):.1f} rec/s, ratio {statistics.median(ratios):.1f}x"
    )


if __name__ == "__main__":
    main()
