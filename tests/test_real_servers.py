"""The whole loop with every model behind a server (opt-in: SCODER_QWEN_TESTS=1, ~15 minutes on
2 CPU cores): Qwen2.5-Coder-0.5B-Instruct as teacher and judge behind `transformers serve`, a
server that knows nothing of scoder (no prefill, no logprobs, no n, no response_format), and as
the synthesizer behind `scoder serve`, standing in for vLLM: each round's LoRA checkpoints are
registered with it at run time (POST /v1/load_lora_adapter) and sampled under their served names,
while training and influence load the same weights locally.

The model directory: $SCODER_QWEN_DIR, else the one `scoder fetch` makes in the
user's scoder cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REAL_CACHE = Path(os.environ.get("SCODER_CACHE", Path.home() / ".cache" / "scoder"))
QWEN = Path(
    os.environ.get(
        "SCODER_QWEN_DIR", REAL_CACHE / "models" / "qwen2.5-coder-0.5b-instruct-1d9614638d18"
    )
)
BENCH = Path(__file__).resolve().parents[1] / "bench"

pytestmark = pytest.mark.skipif(
    os.environ.get("SCODER_QWEN_TESTS") != "1" or not (QWEN / "config.json").is_file(),
    reason="opt-in: SCODER_QWEN_TESTS=1 and the 0.5B model (scoder fetch)",
)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_whose_every_model_sits_behind_a_server(tmp_path):
    sys.path.insert(0, str(BENCH))
    from servers import scoder_serve, transformers_serve

    with (
        transformers_serve(str(QWEN)) as (their_url, their_model),
        scoder_serve(str(QWEN), "synthesizer") as (our_url, served),
    ):
        theirs = {"backend": "openai", "base_url": their_url, "name": their_model}
        config = {
            "run_dir": str(tmp_path / "run"),
            "model": {"name": str(QWEN), "device": "cpu", "backend": "openai",
                      "base_url": our_url, "served_name": served, "lora_adapters": "load"},
            "seeds": {"max_seeds": 24, "min_lines": 4, "max_lines": 20, "max_chars": 800},
            "teacher": {"route": "generate", "model": theirs, "limit": 4},
            "synthesis": {"n": 1, "max_new_tokens": 320, "chunk_size": 8},
            "score": {"judge": theirs, "max_new_tokens": 80},
            "train": {"epochs": 2, "batch_size": 2, "learning_rate": 1e-4, "max_length": 1024,
                      "lora_targets": ["q_proj", "v_proj"]},
            "select": {"k": 2, "projection_dim": 64},
            "decontaminate": {"near_duplicates": False},
            "loop": {"rounds": 1, "seeds_per_round": 4, "dp_heldout": 1, "checkpoints": 2},
            "final": {"samples": 3},
        }  # fmt: skip
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "SCODER_CACHE": str(REAL_CACHE)}
        proc = subprocess.run(
            [sys.executable, "-m", "scoder.cli", "run", str(path)],
            capture_output=True, text=True, env=env, timeout=3600,
        )  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "result.txt").write_text(proc.stdout + proc.stderr)
    # the teacher wrote D_p through the third-party server, from seeds of its own
    teacher_seeds = {s["id"] for s in lines(run / "rounds" / "0" / "seeds.jsonl")}
    round_seeds = {s["id"] for s in lines(run / "rounds" / "1" / "seeds.jsonl")}
    final_seeds = {s["id"] for s in lines(run / "final" / "seeds.jsonl")}
    assert teacher_seeds and not teacher_seeds & (round_seeds | final_seeds)
    assert lines(run / "dp" / "train.jsonl")
    # the round sampled both checkpoints through scoder serve, under their served names
    r1 = run / "rounds" / "1"
    synth = json.loads((r1 / "manifest.json").read_text())["stages"]["synthesize"]
    assert synth["capabilities"]["continuation"] is True
    kept = lines(r1 / "synthesize" / "kept.jsonl")
    assert kept and {c["checkpoint"] for c in kept} <= {"epoch-1", "epoch-2"}
    served_names = synth["model"]["adapters"]
    assert set(served_names) == {"epoch-1", "epoch-2"}
    assert all(name.startswith(("epoch-1-", "epoch-2-")) for name in served_names.values())
    # a random stream per checkpoint
    assert len({c["sampling"]["seed"] for c in kept}) == len({c["checkpoint"] for c in kept})
    # parsed, executed and scored (the judge read as text: the server gives no logprobs)
    scored = lines(r1 / "score" / "scored.jsonl")
    assert scored and all(c["execution"] is not None for c in scored)
    assert any(c["judge"]["method"] == "text" and c["score"] is not None for c in scored)
    assert (r1 / "train" / "checkpoints").is_dir()
    assert lines(run / "final" / "dataset.jsonl")
    assert manifest["stages"]
