"""`scoder demo` (one whole round of the method on the embedded model): wall time, peak RSS, and
how the time grows with the round's seed count.

Each measurement is a fresh `scoder demo` process in a fresh run directory (nothing resumed), with
`loop.seeds_per_round` set to each value asked for; everything else is configs/demo.yaml. Peak
RSS is the largest resident set of that process tree's biggest process (ru_maxrss of the waited
children: the sandboxed programs are tiny, the demo process is the peak). Per-step times come from
the manifests the run writes.

    .venv/bin/python bench/bench_demo.py                   # the demo as shipped (4 seeds)
    .venv/bin/python bench/bench_demo.py --seeds 8 16 32   # growth with the seed count
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def stage_times(run: Path) -> dict[str, float]:
    """Seconds per stage, from every manifest under the run directory."""
    out: dict[str, float] = {}
    for manifest in sorted(run.rglob("manifest.json")):
        where = manifest.parent.relative_to(run).as_posix()
        for name, stage in json.loads(manifest.read_text()).get("stages", {}).items():
            key = f"{where}/{name}" if where != "." else name
            out[key] = stage.get("duration_s", 0.0)
    return out


def measure(seeds: int | None, root: Path) -> dict:
    run = root / f"demo-{seeds or 'default'}"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "scoder.cli", "demo", "--out", str(run)]
    if seeds:
        cmd += ["--set", f"loop.seeds_per_round={seeds}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode:
        sys.exit(f"demo failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((run / "summary.json").read_text())
    return {
        "seeds_per_round": seeds or "default",
        "seconds": round(seconds, 1),
        # ru_maxrss of children is the max over all waited children so far: only valid as a
        # peak when it grew during this run, so report it only then
        "peak_rss_mib": round(peak / 1024) if peak > before else None,
        "stages_s": stage_times(run),
        "round_1": {
            key: summary["rounds"][0][key]
            for key in ("generated", "parsed", "decontaminated", "best_per_seed", "selected")
        }
        if summary["rounds"]
        else None,
        "final_samples": summary["final"].get("samples"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[])
    parser.add_argument("--root", type=Path, default=Path("/tmp/scoder-bench-demo"))
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}", flush=True)
    for seeds in args.seeds or [None]:
        result = measure(seeds, args.root)
        print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
