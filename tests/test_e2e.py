"""End to end on the real embedded SmolLM2-135M-Instruct: `scoder demo`, offline, no network."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scoder.models.loading import EMBEDDED_MODEL_ID, embedded_model
from scoder.records import Candidate
from scoder.store import read_jsonl

pytestmark = pytest.mark.slow
NO_NETWORK = Path(__file__).parent / "no_network"


def test_stages_on_the_embedded_model(tmp_path):
    """seeds -> synthesize -> score through the CLI with the demo config, as a user would start,
    network blocked. (The whole demo round is measured in bench/bench_demo.py; `scoder run` is
    tested end to end on a tiny model in test_loop.py.)"""
    out = tmp_path / "demo"
    network_log = tmp_path / "network.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    }
    env.update(PYTHONPATH=str(NO_NETWORK), SCODER_TEST_NETWORK_LOG=str(network_log))
    demo = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
    # greedy and small, so the test is quick and its outcome does not hang on sampling luck
    sets = [
        "seeds.max_seeds=4",
        "synthesis.n=1",
        "synthesis.temperature=0",
        "synthesis.max_new_tokens=320",
        "model.device=cpu",
        "model.name=null",  # the demo's Qwen model is a download; the embedded one is not
        "score.judge.name=null",
    ]
    stdout = ""
    for command in ("seeds", "synthesize", "score"):
        args = [sys.executable, "-m", "scoder.cli", command, "-c", str(demo), "--out", str(out)]
        for item in sets:
            args += ["--set", item]
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        stdout += proc.stdout
    proc.stdout = stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not network_log.exists(), f"network was tried: {network_log.read_text()}"

    manifest = json.loads((out / "manifest.json").read_text())
    stage = manifest["stages"]["synthesize"]
    ref = embedded_model()
    assert stage["model"]["id"] == EMBEDDED_MODEL_ID
    assert stage["model"]["digest"] == ref.digest and ref.digest.startswith("sha256:")
    assert manifest["stages"]["seeds"]["counts"]["kept"] == 4

    accepted = read_jsonl(out / "synthesize" / "kept.jsonl", Candidate)
    rejected = read_jsonl(out / "synthesize" / "dropped.jsonl", Candidate)
    counts = stage["counts"]
    assert counts["generated"] == 4 == len(accepted) + len(rejected)
    assert (counts["accepted"], counts["rejected"]) == (len(accepted), len(rejected))
    assert accepted, "the embedded model should turn at least one snippet into a usable problem"
    for cand in accepted:
        assert cand.problem.strip()
        ast.parse(cand.solution)
        ast.parse(cand.tests)
        assert cand.model_digest == ref.digest and cand.completion_tokens > 0
    for cand in rejected:
        assert cand.drop.reason
    assert stage["throughput"]["tokens_per_second"] > 0

    # score: every parsed candidate executed in the sandbox and judged; one kept per seed at most
    score = manifest["stages"]["score"]
    scored = read_jsonl(out / "score" / "scored.jsonl", Candidate)
    selected = read_jsonl(out / "score" / "kept.jsonl", Candidate)
    dropped = read_jsonl(out / "score" / "dropped.jsonl", Candidate)
    assert {c.id for c in scored} == {c.id for c in accepted}
    assert len(selected) + len(dropped) == len(scored) == score["counts"]["candidates"]
    assert len({c.seed_id for c in selected}) == len(selected)
    for cand in scored:
        assert cand.execution.status in ("passed", "failed", "error", "timeout", "memory", "killed")
        assert cand.execution.isolation == score["sandbox"]["isolation_used"]
        assert cand.judge.attempts in (1, 2)
        assert (cand.score is None) == (cand.judge.scores is None)
        if cand.judge.scores is None:
            assert cand.judge.reason
    assert score["template"]["digest"].startswith("sha256:") and "calibration" in score
    assert "judge calibration" in proc.stdout


def test_embedded_model_loads_from_cache_without_network(no_network):
    from scoder.models import SamplingParams
    from scoder.models.hf import TransformersBackend

    ref = embedded_model()  # converted by the demo test, or now
    assert (ref.path / "model.safetensors").is_file()
    backend = TransformersBackend(ref, device="cpu")
    (completion,) = backend.generate(
        [[{"role": "user", "content": "Say hello."}]],
        n=1,
        params=SamplingParams(temperature=0, max_new_tokens=8),
    )[0]
    assert completion.text.strip() and completion.completion_tokens <= 8
    assert no_network == []
