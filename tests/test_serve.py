"""`scoder serve` + the OpenAI backend, end to end: a real server process, the real openai client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from scoder.errors import ScoderError
from scoder.models import SamplingParams
from scoder.models.openai_backend import OpenAIBackend

CHATS = [
    [{"role": "user", "content": "Write a function."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "### Problem\n"}],
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # far from the base model, so outputs differ
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(tiny_model_dir, adapter_dir):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scoder.cli",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--served-model-name",
            "tiny",
            "--adapter",
            f"ckpt1={adapter_dir}",
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"scoder serve died: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                json.load(r)
            break
        except OSError:
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_models_list_names_base_and_adapters(server):
    with urllib.request.urlopen(server + "/models") as r:
        assert [m["id"] for m in json.load(r)["data"]] == ["tiny", "ckpt1"]


def test_openai_client_generates_through_the_server(server):
    backend = OpenAIBackend(base_url=server, model="tiny")
    out = backend.generate(
        CHATS, n=2, params=SamplingParams(temperature=1.0, max_new_tokens=8, seed=3)
    )
    assert [len(c) for c in out] == [2, 2]
    for completions in out:
        for c in completions:
            assert c.finish_reason in ("stop", "length") and c.prompt_tokens > 0
    info = backend.describe()
    assert info["usage"]["requests"] == 2 and info["usage"]["completion_tokens"] > 0
    assert info["digest"].startswith("api:")


def test_adapters_are_served_by_name(server):
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    base = OpenAIBackend(base_url=server, model="tiny").generate(CHATS[:1], 1, params)
    tuned = OpenAIBackend(base_url=server, model="ckpt1").generate(CHATS[:1], 1, params)
    assert base[0][0].text != tuned[0][0].text


def test_request_log_means_a_rerun_sends_nothing(server, tmp_path):
    log = tmp_path / "requests.jsonl"
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=5)
    first = OpenAIBackend(base_url=server, model="tiny")
    first.use_request_log(log)
    a = first.generate(CHATS, 1, params)
    # the same requests against a server that is not there: answered from the log
    offline = OpenAIBackend(
        base_url=f"http://127.0.0.1:{free_port()}/v1", model="tiny", check_server=False
    )
    offline.use_request_log(log)
    b = offline.generate(CHATS, 1, params)
    assert [c[0].text for c in a] == [c[0].text for c in b]
    assert offline.usage["requests"] == 0 and offline.usage["cached_requests"] == 2
    log.write_text(log.read_text() + '{"key": "cut by a cra')  # a torn last line is ignored
    offline.generate(CHATS, 1, params)


def test_clear_errors(server, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ScoderError, match=f"cannot reach the OpenAI-compatible server at {dead}"):
        OpenAIBackend(base_url=dead, model="tiny")
    with pytest.raises(ScoderError, match="does not serve 'nope'.*tiny, ckpt1"):
        OpenAIBackend(base_url=server, model="nope")
    monkeypatch.delenv("SCODER_TEST_KEY", raising=False)
    with pytest.raises(ScoderError, match="SCODER_TEST_KEY.*not set"):
        OpenAIBackend(base_url=server, model="tiny", api_key_env="SCODER_TEST_KEY")
    lost = OpenAIBackend(base_url=dead, model="tiny", check_server=False, max_retries=1)
    with pytest.raises(ScoderError, match="finished requests are kept"):
        lost.generate(CHATS, 1, SamplingParams(max_new_tokens=4))


def test_synthesize_through_the_server(server, tmp_path):
    from scoder.config import load_config
    from scoder.records import Candidate
    from scoder.seeds import run_seeds
    from scoder.store import read_jsonl
    from scoder.synthesize import run_synthesize

    code = tmp_path / "code"
    code.mkdir()
    (code / "m.py").write_text(
        "def f(x):\n    y = x + 1\n    return y\n\n\ndef g(x):\n    z = x * 2\n    return z\n"
    )
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"seeds.source={code}",
            "model.backend=openai",
            f"model.base_url={server}",
            "model.name=tiny",
            "synthesis.n=2",
            "synthesis.max_new_tokens=8",
            "model.price_per_million_tokens={prompt: 1.0, completion: 2.0}",
        ],
    )
    run_seeds(cfg)
    run, result = run_synthesize(cfg)
    out = run.stage_dir("synthesize")
    assert (
        len(read_jsonl(out / "candidates.jsonl", Candidate))
        + len(read_jsonl(out / "rejected.jsonl", Candidate))
        == 4
    )
    model = run.load_manifest()["stages"]["synthesize"]["model"]
    assert (
        model["backend"] == "openai"
        and model["usage"]["requests"] == 2
        and model["usage"]["cost"] > 0
    )
    assert len((out / "requests.jsonl").read_text().splitlines()) == 2
