"""Peak memory of scoring's and selection's work over a pool, at 1K, 10K and 100K candidates.

No model, no sandbox: the candidates are synthetic with realistic sizes (seed ~300 chars, problem
~400, solution ~600, tests ~400, raw output ~1,500, stderr of a failure 0.5-4 KB before the
stage's cap), their execution results and judge scores fake. They are written as the very files
the stages read:

- score: the candidates file (what decontamination keeps) and the stage's own finished parts
  (RUN/score/parts/, executed and judged), so `run_score` resumes every chunk and does only its
  post-execution work: weights fitted to execution (`--fit-weights execution`), calibration,
  best per seed, scored/kept/dropped written. Four candidates per seed (M=2 x N=2).
- select: the kept.jsonl of a score stage run (by the same code) on a pool of one candidate per
  seed, ranked and written by judge-top, random, and influence; influence's scores are given
  (the gradient pass is replaced by a function returning fixed scores, its checkpoint and model
  by stubs), so what is measured is the ranking and the writing.

Each measurement is a fresh process: its peak RSS (VmHWM) minus its RSS after the imports
(scoder, numpy, scipy) is the stage's own. Run with PYTHONPATH=DIR to measure the scoder in DIR.

    .venv/bin/python bench/bench_memory.py --sizes 1000,10000,100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ASPECTS = ["consistency", "correctness", "clarity", "relevance", "difficulty"]
CHUNK = 64  # score.chunk_size's default: the parts are the stage's own
SIZES = {"seed": 300, "problem": 400, "solution": 600, "tests": 400, "raw": 1500}


def _corpus(rng: random.Random) -> str:
    words = [
        "def",
        "return",
        "for",
        "in",
        "if",
        "else",
        "self",
        "value",
        "items",
        "result",
        "assert",
        "range(n)",
        "len(xs)",
        "==",
        "+",
        "(a, b)",
        "\n    ",
        "\n",
        "count",
        "total",
        "index",
        "key",
    ]
    return " ".join(rng.choice(words) for _ in range(400_000))


def _text(corpus: str, rng: random.Random, size: int, tag: str) -> str:
    size = max(20, int(rng.gauss(size, size / 5)))
    start = rng.randrange(0, len(corpus) - size)
    return f"{tag} {corpus[start : start + size]}"


def _stderr(corpus: str, rng: random.Random, i: int) -> str:
    frames = "".join(
        f'  File "/tmp/sandbox/solution.py", line {rng.randrange(1, 90)}, in f{k}\n'
        f"    {corpus[(i * 37 + k * 101) % 100_000 : (i * 37 + k * 101) % 100_000 + 60]}\n"
        for k in range(rng.randrange(3, 40))
    )
    return f"Traceback (most recent call last):\n{frames}AssertionError: case {i} failed\n"


def candidate_rows(n: int, per_seed: int, seed: int = 0) -> list[tuple[dict, dict, dict]]:
    """(candidate, execution, judgement) dicts of n synthetic candidates, `per_seed` per seed."""
    rng = random.Random(seed)
    corpus = _corpus(rng)
    out = []
    for i in range(n):
        cid = f"r1-s{i // per_seed:06d}-epoch-{1 + i % 2}-{i % per_seed}"
        cand = {
            "id": cid,
            "seed_id": f"s{i // per_seed:06d}",
            "seed_text": _text(corpus, rng, SIZES["seed"], cid),
            "seed_source": {"kind": "stdlib", "location": f"lib/mod{i % 97}.py", "line_start": 1},
            "round": 1,
            "checkpoint": f"epoch-{1 + i % 2}",
            "sample_index": i % per_seed,
            "model": "synthesizer",
            "model_digest": "sha256:" + "0" * 64,
            "template": "oss-instruct-v1",
            "template_digest": "sha256:" + "1" * 64,
            "sampling": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 512, "seed": i},
            "raw_output": _text(corpus, rng, SIZES["raw"], cid),
            "prompt_tokens": 300,
            "completion_tokens": 400,
            "finish_reason": "stop",
            "problem": _text(corpus, rng, SIZES["problem"], cid),
            "solution": _text(corpus, rng, SIZES["solution"], cid),
            "tests": _text(corpus, rng, SIZES["tests"], cid),
        }
        roll = rng.random()
        status = "passed" if roll < 0.6 else ("failed" if roll < 0.85 else "error")
        total = rng.randrange(1, 8)
        passed = total if status == "passed" else rng.randrange(0, total)
        execution = {
            "status": status,
            "tests_total": total,
            "tests_passed": passed,
            "pass_rate": passed / total,
            "isolation": "bwrap",
            "detail": "" if status == "passed" else f"AssertionError: case {i} failed",
            "stderr": "" if status == "passed" else _stderr(corpus, rng, i)[-2000:],
            "vacuous": "no assert statement" if rng.random() < 0.03 else None,
        }
        scores = {a: rng.randrange(0, 10) for a in ASPECTS}
        expected = {
            a: round(min(9.0, max(0.0, s + rng.gauss(0, 0.5))), 4) for a, s in scores.items()
        }
        text = "{" + ", ".join(f'"{a}": {s}' for a, s in scores.items()) + "}"
        judgement = {"scores": scores, "expected": expected, "method": "choices", "raw": [text]}
        out.append((cand, execution, judgement))
    return out


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_pool(where: Path, n: int, per_seed: int) -> Path:
    """The score stage's inputs under `where`: candidates.jsonl and run/score/parts/."""
    from scoder.records import Candidate

    rows = candidate_rows(n, per_seed)
    Candidate.model_validate(rows[0][0])  # the synthetic rows are real records
    _write(where / "candidates.jsonl", [c for c, _, _ in rows])
    parts = where / "run" / "score" / "parts"
    for start in range(0, n, CHUNK):
        chunk = [
            {**c, "execution": e, "judge": j, "score": None, "influence": None, "drop": None}
            for c, e, j in rows[start : start + CHUNK]
        ]
        Candidate.model_validate(chunk[0])
        _write(parts / f"part-{start // CHUNK:05d}.jsonl", chunk)
    return where / "candidates.jsonl"


def _config(run_dir: Path, *extra: str) -> Any:
    from scoder.config import load_config

    return load_config(
        None,
        [
            f"run_dir={run_dir}",
            "score.sandbox.isolation=rlimits",
            f"score.chunk_size={CHUNK}",
            *extra,
        ],
    )


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
    raise RuntimeError(key)


def _imports() -> None:
    import numpy  # noqa: F401
    import scipy.optimize  # noqa: F401
    import scipy.special  # noqa: F401
    import scipy.stats  # noqa: F401

    import scoder.score  # noqa: F401
    import scoder.select  # noqa: F401


def measure_score(where: Path) -> dict[str, Any]:
    from scoder.score import run_score
    from scoder.store import RunDir

    cfg = _config(where / "run")
    baseline = _status("VmRSS")
    started = time.perf_counter()
    run_score(cfg, where / "candidates.jsonl", run=RunDir(where / "run"), fit_labels="execution")
    return {"wall_s": time.perf_counter() - started, "baseline_kib": baseline}


def fake_influence(where: Path) -> None:
    """Influence by given scores: the gradient pass, its checkpoint and model replaced."""
    import types

    import numpy as np

    import scoder.select as select

    def compute(config, run, candidates, source, dp, checkpoints, *, shard_tag="part"):
        scores = np.load(where / "influence.npy")[: len(candidates)]
        return select.Influence(scores, [{"path": "fake", "mean_lr": 1.0}], 0, [])

    select.compute_influence = compute
    select.check_checkpoint = lambda p: Path(p)
    select.resolve_model = lambda *a, **k: types.SimpleNamespace(digest="sha256:fake")


def measure_select(where: Path, strategy: str) -> dict[str, Any]:
    from scoder.select import run_select
    from scoder.store import RunDir

    fake_influence(where)
    out = where / f"select-{strategy}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = _config(out)
    baseline = _status("VmRSS")
    started = time.perf_counter()
    run_select(
        cfg,
        where / "run" / "score" / "kept.jsonl",
        strategy=strategy,
        dp=where / "dp.jsonl",
        checkpoints=[where / "checkpoint"],
        run=RunDir(out),
        force=True,
    )
    return {"wall_s": time.perf_counter() - started, "baseline_kib": baseline}


def setup_select(where: Path, n: int) -> None:
    """A score stage's kept.jsonl of n candidates (one per seed), made by the code measured."""
    import numpy as np

    from scoder.score import run_score
    from scoder.store import RunDir

    write_pool(where, n, per_seed=1)
    run_score(_config(where / "run"), where / "candidates.jsonl", run=RunDir(where / "run"))
    np.save(where / "influence.npy", np.random.default_rng(0).normal(size=n))
    (where / "checkpoint").mkdir(exist_ok=True)
    (where / "checkpoint" / "adapter_model.safetensors").write_bytes(b"fake adapter")
    _write(where / "dp.jsonl", [{"seed_text": "x", "problem": "p", "solution": "s"}])


def _child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mb(*paths: Path) -> float:
    total = 0
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scoder-bench-memory"))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, where, *rest = args.child
        where = Path(where)
        if kind == "setup-score":
            write_pool(where, int(rest[0]), per_seed=4)
            print(json.dumps({}))
            return
        if kind == "setup-select":
            setup_select(where, int(rest[0]))
            print(json.dumps({}))
            return
        _imports()
        result = measure_score(where) if kind == "score" else measure_select(where, rest[0])
        result["peak_kib"] = _status("VmHWM")
        print(json.dumps(result))
        return

    import scoder

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        base = args.work / f"n{n}"
        shutil.rmtree(base, ignore_errors=True)
        score_dir, select_dir = base / "score", base / "select"
        _child(["setup-score", str(score_dir), str(n)])
        score_input = _mb(score_dir / "candidates.jsonl", score_dir / "run" / "score" / "parts")
        figures = _child(["score", str(score_dir)])
        out = score_dir / "run" / "score"
        written = _mb(*(p for p in out.iterdir() if p.is_file()))
        rows.append(
            (
                "score (fit execution, calibrate, best per seed, write)",
                n,
                score_input,
                written,
                figures,
            )
        )
        _child(["setup-select", str(select_dir), str(n)])
        select_input = _mb(select_dir / "run" / "score" / "kept.jsonl")
        for strategy in ("judge", "random", "influence"):
            figures = _child(["select", str(select_dir), strategy])
            written = _mb(select_dir / f"select-{strategy}" / "select")
            rows.append((f"select {strategy} (+ baselines)", n, select_input, written, figures))
        shutil.rmtree(base, ignore_errors=True)

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    print(f"scoder {Path(scoder.__file__).parent}; {cpu}; Python {platform.python_version()}")
    print(
        "| stage | candidates | input MB | written MB | peak RSS over baseline MiB | baseline MiB | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    table = []
    for name, n, mb_in, mb_out, f in rows:
        over = (f["peak_kib"] - f["baseline_kib"]) / 1024
        print(
            f"| {name} | {n:,} | {mb_in:.1f} | {mb_out:.1f} | {over:.1f} | {f['baseline_kib'] / 1024:.0f} | {f['wall_s']:.1f} |"
        )
        table.append(
            {
                "stage": name,
                "n": n,
                "input_mb": mb_in,
                "written_mb": mb_out,
                "peak_over_baseline_mib": over,
                **f,
            }
        )
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
