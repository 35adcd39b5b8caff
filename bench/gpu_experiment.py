"""`scoder experiment` with a 7B synthesizer on one lent GPU, reduced to finish in under 8 minutes.

Writes DIR/config.yaml (every choice commented), records the device and versions, runs
`scoder experiment DIR/config.yaml --out DIR` as a subprocess under a wall-clock limit, then
prints ONE JSON record (and appends it to DIR/gpu_experiment.json): wall seconds per group of
ledger steps (pool, signals, each arm), each arm's mean per metric and its selection cost, and
whether it finished. Cut short, it reports what the ledger says finished.

    python bench/gpu_experiment.py --model /models/Qwen2.5-Coder-7B-Instruct   # on the GPU
    python bench/gpu_experiment.py --tiny --out /tmp/gpu-exp-tiny              # CPU check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

METRICS = ("heldout_dp_loss", "parse_rate", "pass_rate", "judge_score")
# `all` last: its training (the whole pool) is the longest; random early, the yardstick.
ARMS = ["influence", "rds", "random", "judge", "passed_random", "all"]

CONFIG = """\
# bench/gpu_experiment.py{tiny_note}: `scoder experiment`, sized for under 8 minutes on one H100/H200
run_dir: {out}
random_seed: 0

model:
  name: {model}  # a local directory: nothing can be downloaded on the lent machine
  device: {device}
  dtype: {dtype}  # bfloat16 on the GPU
  # HF generate in process, batched: simple and enough at this size. At scale the real path is
  # vLLM behind the openai backend (backend: openai, base_url: ...), which is far faster.
  batch_size: {batch}

seeds: {{source: "builtin:mbpp-train", column: solution, pure_functions: true, max_lines: 16,
        max_chars: 600}}  # MBPP train solutions (shipped: no download), pure functions only

teacher:
  route: import  # D_p imported from MBPP train: no teacher model to load
  source: "builtin:mbpp-train"
  fields: {{seed_text: seed_text}}
  limit: {teacher}  # D_p rows; loop.dp_heldout of them are held out
  license: CC-BY-4.0

# 1 sample per seed from each of the M checkpoints
synthesis: {{n: 1, temperature: 0.7, top_p: 0.95, max_new_tokens: {tokens}}}

score:
  # the judge: the same model, in process
  judge: {{name: {model}, device: {device}, dtype: {dtype}, batch_size: {batch}}}
  max_new_tokens: 48
  sandbox: {{timeout_s: 10}}

train:
  epochs: 2  # a checkpoint per epoch: M = 2
  batch_size: {train_batch}
  max_length: {max_length}  # lora: true, r 8 on q/k/v/o, learning rate 2e-4: the defaults

select: {{k: {k}, projection_dim: {dim}}}  # LoRA gradients projected to this many dims

loop:
  seeds_per_round: {seeds}
  checkpoints: 2  # M: sample from the last 2 checkpoints (train.epochs 2 makes 2)
  dp_heldout: {heldout}  # every arm's held-out D_p loss is measured on these
  mix_dp: true

experiment:
  arms: [{arms}]
  seeds: [1, 2]  # reduced from the default 3 to fit in 8 minutes: the spread is of 2 runs
  next_seeds: {next_seeds}  # fresh seeds every arm's synthesizer samples on
"""


def write_config(args: argparse.Namespace, out: Path) -> Path:
    gpu = dict(model=json.dumps(args.model), device="cuda", dtype="bfloat16", batch=64)
    gpu |= dict(teacher=16, heldout=8, tokens=384, train_batch=8, max_length=1024, k=12)
    gpu |= dict(dim=8192, seeds=48, arms=", ".join(ARMS), next_seeds=8, tiny_note="")
    if args.tiny:  # the embedded SmolLM2-135M on this CPU: the script's own check
        gpu |= dict(model="null", device="cpu", dtype="float32", batch=16, teacher=6, heldout=2)
        gpu |= dict(tokens=200, train_batch=4, max_length=640, k=2, dim=2048, seeds=6)
        gpu |= dict(arms="influence, rds, random", next_seeds=2, tiny_note=" --tiny (CPU sizes)")
    path = out / "config.yaml"
    path.write_text(CONFIG.format(out=json.dumps(str(out)), **gpu), encoding="utf-8")
    return path


def environment(tiny: bool) -> dict:
    versions: dict = dict.fromkeys(("torch", "transformers", "peft", "trl", "scoder"))
    for name in versions:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    device: dict = {"name": "cpu"}
    try:
        import torch

        if not tiny and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(0)
            device = {"name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
            device |= {"memory_gib": round(total / 2**30, 1), "free_gib": round(free / 2**30, 1)}
    except Exception as exc:  # no torch / a broken driver: say so, the run will say more
        device = {"name": "cpu", "cuda_error": f"{type(exc).__name__}: {exc}"}
    return {"device": device, "versions": versions}


def stop(signum: int, frame: object) -> None:  # SIGTERM: stop the run, still report
    raise InterruptedError(f"signal {signum}")


def run_scoder(cmd: list[str], log_path: Path, budget_s: float) -> tuple[int | None, str | None]:
    """Run it in its own process group, output to the log; kill it at the limit or on SIGTERM."""
    env = os.environ | {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}  # no network
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            return proc.wait(timeout=budget_s), None
        except (subprocess.TimeoutExpired, InterruptedError, KeyboardInterrupt) as exc:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            cut = isinstance(exc, subprocess.TimeoutExpired)
            return None, f"cut at --budget-s {budget_s:g}" if cut else "stopped by a signal"


def step_seconds(entry: dict) -> float | None:  # the ledger's `seconds`, else its timestamps
    if entry.get("seconds") is not None or not entry.get("finished_at"):
        return entry.get("seconds")
    start, end = (datetime.fromisoformat(entry[k]) for k in ("started_at", "finished_at"))
    return (end - start).total_seconds()


def ledger_summary(out: Path) -> tuple[dict, dict]:
    """Seconds per group of steps: pool (seeds, dp, round-0/1, next seeds), signals, each arm
    (select/train/next over seeds); each arm's metrics from its finished steps (a cut run)."""
    ledger = out / "loop.json"
    steps = json.loads(ledger.read_text())["steps"] if ledger.is_file() else {}
    pool, signals, arms, partial, unfinished = {}, {}, {}, {}, []  # type: ignore[var-annotated]
    for name, entry in steps.items():
        secs = step_seconds(entry)
        if entry.get("status") != "done" or secs is None:
            unfinished.append(name)
            continue
        parts = name.split("/")
        if name.startswith("experiment/signals/"):
            signals[parts[2]] = round(signals.get(parts[2], 0.0) + secs, 2)
        elif parts[0] == "experiment" and len(parts) > 3:
            arm = arms.setdefault(parts[1], {"seconds": 0.0, "runs_done": 0})
            arm["seconds"] = round(arm["seconds"] + secs, 2)
            values = partial.setdefault(parts[1], {m: [] for m in METRICS})
            result = entry.get("result") or {}
            if parts[3] == "train" and result.get("heldout_loss") is not None:
                values["heldout_dp_loss"].append(result["heldout_loss"])
            if parts[3:] == ["next", "score"]:
                arm["runs_done"] += 1
                gen, scored = result.get("generated"), result.get("scored")
                if gen:
                    values["parse_rate"].append(result.get("parsed", 0) / gen)
                if scored:
                    values["pass_rate"].append(result.get("passed", 0) / scored)
                if result.get("judge_score") is not None:
                    values["judge_score"].append(result["judge_score"])
        else:
            pool[name] = round(secs, 2)
    timing = {"pool_s": round(sum(pool.values()), 2), "pool_steps_s": pool}
    timing |= {"signals_s": signals, "arms": arms, "unfinished_steps": unfinished}
    means = {
        arm: {"metrics": {m: (sum(v) / len(v) if v else None) for m, v in values.items()}}
        for arm, values in partial.items()
    }
    return timing, means


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", help="a local model directory (or a cached hub id)")
    ap.add_argument("--out", default="/tmp/gpu-experiment", help="the run directory")
    ap.add_argument("--budget-s", type=float, help="run's wall-clock limit (480; --tiny 3600)")
    ap.add_argument("--tiny", action="store_true", help="CPU, embedded SmolLM2-135M, tiny sizes")
    ap.add_argument("--force", action="store_true", help="discard an earlier run in --out")
    args = ap.parse_args()
    args.budget_s = args.budget_s or (3600.0 if args.tiny else 480.0)
    if not args.tiny:
        if not args.model:
            ap.error("--model PATH is required (unless --tiny)")
        model = Path(args.model).expanduser()
        looks_local = model.exists() or args.model.startswith(("/", ".", "~"))
        if looks_local and not (model / "config.json").is_file():
            sys.exit(f"error: model directory {args.model} not found (or it has no config.json)")
        args.model = str(model.resolve()) if looks_local else args.model
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = write_config(args, out)
    record = {"script": "bench/gpu_experiment.py", "tiny": args.tiny, "model": args.model}
    record |= environment(args.tiny)
    print(f"gpu_experiment: {record['device']['name']} -> {out}", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "scoder.cli", "experiment", str(config), "--out", str(out)]
    cmd += ["--force"] if args.force else []
    start = time.time()
    signal.signal(signal.SIGTERM, stop)
    rc, cut = run_scoder(cmd, out / "experiment.log", args.budget_s)
    record |= {"total_wall_s": round(time.time() - start, 1), "scoder_rc": rc}
    record |= {"budget_s": args.budget_s, "timed_out": cut is not None and "budget" in cut}
    timing, partial = ledger_summary(out)
    table_path = out / "experiment.json"
    fresh = table_path.is_file() and table_path.stat().st_mtime >= start
    record["finished"] = rc == 0 and fresh
    if fresh:
        table = json.loads(table_path.read_text())
        record["design"], record["shared"] = table.get("design"), table.get("shared")
        arms = {
            arm: {
                "metrics": {m: s.get("mean") for m, s in entry["metrics"].items()},
                "cost": entry["cost"],
            }
            for arm, entry in table["arms"].items()
        }
        record["arms"], record["arms_from"] = arms, "experiment.json"
    else:
        record["arms"], record["arms_from"] = partial, "ledger (finished steps only)"
    record["steps"] = timing
    record["error"] = cut or (f"scoder experiment exited with {rc}" if rc else None)
    if not record["finished"]:
        tail = (out / "experiment.log").read_text(errors="replace").splitlines()[-40:]
        why = record["error"] or "not finished"
        print(f"{why}; the end of {out}/experiment.log:", *tail, sep="\n", file=sys.stderr)
    line = json.dumps(record, default=str)
    with (out / "gpu_experiment.json").open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    print(line, flush=True)
    return 0 if record["finished"] else 1


if __name__ == "__main__":
    sys.exit(main())
