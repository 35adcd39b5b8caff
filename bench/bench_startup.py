"""Start-up time of the command line: `scoder --help`, as a process (interpreter start included).

scoder's own modules are imported at the top of every file (heavy third-party packages where they
are used), so `scoder --help` imports every stage. This measures what that costs, against another
source tree of scoder given with --baseline (e.g. a checkout of an earlier commit), interleaved.

    .venv/bin/python bench/bench_startup.py --baseline /path/to/old/checkout/src --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "src"


def seconds(src: Path, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "scoder.cli", *args], env=env, capture_output=True, check=True
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="src/ of another scoder tree")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    trees = {"ours": HERE, **({"baseline": args.baseline} if args.baseline else {})}
    times: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, src in trees.items():
            times[name].append(seconds(src, "--help"))
    median = {name: round(statistics.median(v), 3) for name, v in times.items()}
    result = {"command": "scoder --help", "rounds": args.rounds, "median_s": median}
    if "baseline" in median:
        result["ours_over_baseline"] = round(median["ours"] / median["baseline"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
