"""`make demo` as a new user runs it: a clean checkout, a fresh virtual environment, an empty
scoder cache (so the demo model is fetched and converted), then the demo itself; wall time of
each part, peak memory, disk, the funnel, and (with --repeat) whether a second demo run writes the
same bytes.

    .venv/bin/python bench/bench_demo.py --repeat            # the whole thing, about 30 minutes
    .venv/bin/python bench/bench_demo.py --model embedded    # the zero-download demo

The checkout is `git clone` of HEAD (commit first), so what is measured is what CI and users get.
pip's cache is off (`PIP_NO_CACHE_DIR=1`), as on a fresh machine; the machine's own pip
configuration (indexes, mirrors) is left as it is, and printed. Setup ends when `make` touches
`.venv/.installed`, the fetch when the model's converted directory appears; the rest is the demo
run, whose steps are timed from its ledger. Peak RSS is the largest resident set of any process
`make demo` started (ru_maxrss of the waited children); the demo process is the peak. Disk is
measured at the end (venv, cache, run directory); the fetch also holds the downloaded wheels and
the assembled GGUF (their size is printed) until the conversion is done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def du(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def step_times(run: Path) -> dict[str, float]:
    """Seconds per step of the loop, from its ledger."""
    ledger = json.loads((run / "loop.json").read_text())
    return {
        name: round(step.get("seconds") or 0.0, 1) for name, step in ledger.get("steps", {}).items()
    }


def funnel(run: Path) -> dict[str, list]:
    sys.path.insert(0, str(REPO / "src"))
    from scoder.report.facts import run_facts

    facts = run_facts(run, sample_limit=0)
    stages = [(f"round {r.round}", r) for r in facts.rounds]
    if facts.final:
        stages.append(("final", facts.final))
    return {name: list(f.funnel) for name, f in stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/scoder-bench-demo"))
    parser.add_argument("--model", default=None, help="scoder demo --model (default: its own)")
    parser.add_argument("--repeat", action="store_true", help="run the demo a second time")
    args = parser.parse_args()

    root = args.root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    checkout, cache = root / "scoder", root / "cache"
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["git", "clone", "-q", str(REPO), str(checkout)], check=True)
    env = {**os.environ, "SCODER_CACHE": str(cache), "PIP_NO_CACHE_DIR": "1"}
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "VIRTUAL_ENV"):
        env.pop(key, None)  # a user's shell has none of them
    pip_config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout.strip()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs")
    print(f"commit {head}; pip configuration: {pip_config or 'none'}", flush=True)

    make = ["make", "-C", str(checkout), "demo"]
    if args.model:
        make.append("DEMO_ARGS=--model " + args.model)
    start = time.time()
    log = root / "make-demo.log"
    with log.open("w") as out:
        done = subprocess.run(make, stdout=out, stderr=subprocess.STDOUT, env=env)
    end = time.time()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode:
        sys.exit(f"make demo failed ({done.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    run = checkout / "runs" / "demo"
    setup_end = (checkout / ".venv" / ".installed").stat().st_mtime
    models = sorted((cache / "models").glob("*/scoder-model.json"), key=lambda p: p.stat().st_mtime)
    fetch_end = models[-1].stat().st_mtime if models else setup_end
    first_step = min(
        (s["started_at"] for s in json.loads((run / "loop.json").read_text())["steps"].values()
         if s.get("started_at")),
        default=None,
    )  # fmt: skip
    result = {
        "commit": head,
        "total_s": round(end - start, 1),
        "setup_s": round(setup_end - start, 1),
        "fetch_and_convert_s": round(fetch_end - setup_end, 1) if models else None,
        "demo_run_s": round(end - fetch_end, 1),
        "peak_rss_mib": round(peak / 1024),
        "disk_mib": {
            "venv": round(du(checkout / ".venv") / 2**20),
            "cache": round(du(cache) / 2**20),
            "run": round(du(run) / 2**20),
        },
        "first_step_started_at": first_step,
        "steps_s": step_times(run),
        "funnel": funnel(run),
        "final_rows": sum(1 for _ in (run / "final" / "dataset.jsonl").open()),
        "final_rows_passing": sum(
            1
            for line in (run / "final" / "dataset.jsonl").open()
            if json.loads(line).get("tests_passed")
        ),
        "dataset_sha256": sha256(run / "final" / "dataset.jsonl"),
    }
    print(json.dumps(result, indent=2), flush=True)

    if args.repeat:
        again = checkout / "runs" / "demo-again"
        cmd = [str(checkout / ".venv" / "bin" / "scoder"), "demo", "--out", str(again)]
        if args.model:
            cmd += ["--model", args.model]
        start = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=checkout)
        if done.returncode:
            sys.exit(f"second demo failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        files = ("final/dataset.jsonl", "final/dataset.parquet", "final/README.md")
        same = {f: sha256(run / f) == sha256(again / f) for f in files}
        print(
            json.dumps(
                {"second_run_s": round(time.time() - start, 1), "same_bytes": same}, indent=2
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
