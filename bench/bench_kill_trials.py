"""Kill trials at scale: SIGKILL `scoder run` at random points inside every stage, resume with the
same command, compare with an uninterrupted run byte for byte.

The harness is the suite's own test (tests/test_loop.py,
test_kill_trials_in_every_stage_resume_to_the_same_bytes: the tiny test model trained to answer
like a synthesizer and a judge, one round, the final dataset, a code model and its evaluation);
the suite runs one chain (one kill inside each stage), this runs many, with another seed.

    python bench/bench_kill_trials.py --chains 20 --seed 1

prints, per stage, the kills aimed at it, where they landed (the step the ledger shows cut
short), and the chains whose final dataset, selections or evaluation answers differed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    report_path = Path(tempfile.mkdtemp(prefix="kill-trials-")) / "report.json"
    env = {
        **os.environ,
        "SCODER_KILL_CHAINS": str(args.chains),
        "SCODER_KILL_SEED": str(args.seed),
        "SCODER_KILL_REPORT": str(report_path),
    }
    started = time.perf_counter()
    test = "tests/test_loop.py::test_kill_trials_in_every_stage_resume_to_the_same_bytes"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=REPO, env=env
    )
    minutes = (time.perf_counter() - started) / 60
    if not report_path.is_file():
        sys.exit(f"the test wrote no report (pytest exit {proc.returncode})")
    chains = json.loads(report_path.read_text())
    aimed: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    elsewhere: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for chain in chains:
        for kill in chain["landings"]:
            aimed[kill["aimed"]] += 1
            if kill["landed"] == kill["aimed"]:
                inside[kill["aimed"]] += 1
            else:
                elsewhere[kill["aimed"]][kill["landed"]] += 1
    failed = [chain["chain"] for chain in chains if chain["differ"]]
    print(
        f"\n{len(chains)} chains, seed {args.seed}, {minutes:.1f} min, pytest exit {proc.returncode}"
    )
    print("| stage | kills | landed inside | landed elsewhere |")
    print("|---|---|---|---|")
    for stage, count in aimed.items():
        other = ", ".join(f"{k} {v}" for k, v in elsewhere[stage].items()) or "-"
        print(f"| {stage} | {count} | {inside[stage]} | {other} |")
    print(f"chains whose outputs differed from the uninterrupted run: {failed or 'none'}")
    for chain in chains:
        if chain["differ"]:
            print(f"  chain {chain['chain']}: {chain['differ']}")


if __name__ == "__main__":
    main()
