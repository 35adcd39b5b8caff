"""Re-running `scoder run` after a downstream config change: per-step reuse vs starting afresh.

Before per-step fingerprints, the ledger fingerprinted the whole config: any change after a
finished run (a larger `final.samples`, say) was refused, and the way out (`--force`, or another
run directory) ran every step again. Now a change re-runs the steps it reaches.

A small configuration of the demo (embedded model, configs/demo.yaml with fewer seeds and no
baseline trainings, see BENCH_SETS) is run once to the end; that run directory is the starting
point. Each round, interleaved:

- afresh (the baseline): the changed config in an empty run directory (what --force did);
- reuse (ours): the changed config in a copy of the finished run (only the final steps re-run);
- nothing changed: the original config in a copy of the finished run (bookkeeping alone);
- dry run: `scoder run --dry-run` of the changed config on the finished run.

Every arm's final dataset is compared byte for byte with the fresh run's: reuse must give the
data a fresh run gives. Times are whole `scoder run` processes (interpreter start included).

    .venv/bin/python bench/bench_rerun.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "src" / "scoder" / "configs" / "demo.yaml"
BENCH_SETS = [
    "loop.seeds_per_round=2",
    "loop.train_baselines=false",
    "synthesis.max_new_tokens=160",
    "final.samples=2",
]
CHANGE = "final.samples=4"


def scoder_run(run: Path, *sets: str, dry_run: bool = False) -> float:
    cmd = [sys.executable, "-m", "scoder.cli", "run", str(DEMO), "--out", str(run)]
    for item in [*BENCH_SETS, *sets]:
        cmd += ["--set", item]
    if dry_run:
        cmd.append("--dry-run")
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(
            f"scoder run failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return seconds


def ran(before: Path, after: Path) -> list[str]:
    """The steps of `after` that ran again since it was copied from `before`."""
    old = json.loads((before / "loop.json").read_text())["steps"]
    new = json.loads((after / "loop.json").read_text())["steps"]
    return sorted(
        name
        for name, step in new.items()
        if name not in old or step["finished_at"] != old[name]["finished_at"]
    )


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="Where run directories go.")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="scoder-bench-rerun-"))
    finished = work / "finished"
    shutil.rmtree(finished, ignore_errors=True)
    first = scoder_run(finished)
    print(f"finished run (original config): {first:.1f} s", flush=True)
    times: dict[str, list[float]] = {"afresh": [], "reuse": [], "unchanged": [], "dry_run": []}
    same_data = []
    reran: dict[str, list[str]] = {}
    for r in range(1, args.rounds + 1):
        fresh = work / f"fresh-{r}"
        shutil.rmtree(fresh, ignore_errors=True)
        times["afresh"].append(scoder_run(fresh, CHANGE))
        copy = work / f"reuse-{r}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(finished, copy)
        times["reuse"].append(scoder_run(copy, CHANGE))
        same = work / f"unchanged-{r}"
        shutil.rmtree(same, ignore_errors=True)
        shutil.copytree(finished, same)
        times["unchanged"].append(scoder_run(same))
        times["dry_run"].append(scoder_run(finished, CHANGE, dry_run=True))
        reran = {"reuse": ran(finished, copy), "unchanged": ran(finished, same)}
        dataset = "final/dataset.jsonl"
        same_data.append((fresh / dataset).read_bytes() == (copy / dataset).read_bytes())
        same_data.append((same / dataset).read_bytes() == (finished / dataset).read_bytes())
        print(
            f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
            flush=True,
        )
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": f"{cpu_name()}, {platform.machine()}",
        "config": ["configs/demo.yaml", *BENCH_SETS],
        "change": CHANGE,
        "rounds": args.rounds,
        "seconds": {k: [round(x, 1) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 1) for k, v in medians.items()},
        "afresh_over_reuse": round(medians["afresh"] / medians["reuse"], 2),
        "steps_run_again": reran,
        "same_dataset_as_a_fresh_run": all(same_data),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
